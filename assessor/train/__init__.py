"""Training the Q-DeepSight critic: GRPO over iMCoT tool trajectories, with the Perceptual
Curriculum Reward (``pcr``) and Evidence Gradient Filtering (``egf``), on accelerate.

    python -m assessor.train --config assessor/train/configs/koniq_lora_7b.yaml
    accelerate launch --config_file assessor/train/configs/accelerate_ddp.yaml \\
        -m assessor.train --config assessor/train/configs/koniq_lora_7b.yaml

Importing this package loads no torch; the trainer loads it when built.
"""
