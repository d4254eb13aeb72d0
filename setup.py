from setuptools import find_packages
from setuptools import setup

setup(
    name="aode",
    version="0.1.0",
    description="Average of Domain Experts: continual learning for ASR with SpeechBrain",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["aode", "aode.*", "data_prep"]),
    include_package_data=True,
    package_data={
        "aode.mini": ["rirs/*.wav", "rirs/README.md"],
        "aode": ["mini_generalist/*", "english_spelling.json"],
    },
    install_requires=[
        "speechbrain>=1.0,<1.2",
        "torch>=2.3",
        "torchaudio>=2.3",
        "transformers>=4.48,<5.40",
        "hyperpyyaml>=1.2",
        "jiwer>=3.0",
        "sentencepiece",
        "soundfile",
        "safetensors>=0.4",
        "peft>=0.13",
        "tqdm",
        "matplotlib",
        "numpy",
        "scipy",
        "pydantic>=2",
    ],
    extras_require={
        # The miniature corpus synthesises speech with espeak-ng (GPL-3.0); only
        # aode/mini/synth.py imports it, so the rest of the package stays free of it.
        "mini": ["espeakng-loader"],
        # recipes/average/reproduce.py --launcher slurm (aode/launcher.py): trainings as Slurm jobs
        "cluster": ["submitit>=1.5"],
        # ctranslate2: the oracle runtime of the CTranslate2 Whisper converter's tests (aode/convert_ct2.py)
        "dev": ["pytest", "openai-whisper", "tiktoken", "espeakng-loader", "ruff", "submitit>=1.5", "ctranslate2>=4"],
    },
)
