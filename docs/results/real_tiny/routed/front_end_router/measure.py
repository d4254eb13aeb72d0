import os, glob, json
# run from the repository root, after hparams/real_tiny_routed.yaml
from aode.route import Router, train_router, router_report
from aode.routed import build_routed_model, measure_throughput, read_routed_info
R='results/real_tiny/routed'
trained=Router.load(R+'/router'); made=trained.info['made_from']
out='results/real_tiny/routed/front_end_router'
router=train_router(trained.info['original'], trained.info['manifests'], out+'/router', layers=(0,), utterances_per_class=made['utterances_per_class'], threshold=made['threshold'], seed=made['seed'], progress=False, feature_cache=R+'/features')
tests=json.load(open(R+'/router/test_report/report.json'))['sets']
C='results/real_tiny/corpus'
sets={d:f'{C}/{d}/test.csv' for d in ['vctk','coraal','jl','ne']}|{'Asterisk':'results/real_tiny/real/asterisk/test.csv','PocketSphinx':'results/real_tiny/real/pocketsphinx/all.csv','general_clean':f'{C}/general/test_clean.csv','general_other':f'{C}/general/test_other.csv'}
labels={d:d for d in ['vctk','coraal','jl','ne']}|{s:'general' for s in ['Asterisk','PocketSphinx','general_clean','general_other']}
rep=router_report(router, trained.info['original'], sets, out+'/test_report', labels=labels, progress=False, feature_cache=R+'/features')
print({s:v['accuracy'] for s,v in rep['sets'].items()}, flush=True)
info=read_routed_info(R+'/SVD_r16')
if not os.path.isdir(out+'/routed'):
    build_routed_model(info['base'], info['experts'], out+'/routed', form='svd', rank=16, router=out+'/router', fallback=info['fallback'])
subset={os.path.splitext(os.path.basename(p))[0]: p for p in sorted(glob.glob(R+'/throughput/*.csv'))}
m=measure_throughput(out+'/routed', subset, batch_size=16, oracle=False)
json.dump(m, open(out+'/throughput.json','w'), indent=1)
print('l0', m['base_times'], m['routed_times'], m['route_counts'], m['routed_utt_per_s']/m['base_utt_per_s'], flush=True)
m=measure_throughput(R+'/SVD_r16', subset, batch_size=16, oracle=True)
json.dump(m, open(out+'/throughput_oracle.json','w'), indent=1)
print('oracle', m['base_times'], m['routed_times'], m['routed_utt_per_s']/m['base_utt_per_s'], flush=True)
