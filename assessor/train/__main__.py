"""``python -m assessor.train --config cfg.yaml``: GRPO training of the critic (see --help)."""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """\
examples:
  one GPU:
    python -m assessor.train --config assessor/train/configs/koniq_lora_7b.yaml
  8 GPUs on one machine (DDP; FSDP and DeepSpeed configs are next to it):
    accelerate launch --config_file assessor/train/configs/accelerate_ddp.yaml --num_processes 8 \\
        -m assessor.train --config assessor/train/configs/koniq_lora_7b.yaml
  64 GPUs = 8 machines x 8 (run on every machine, with its own --machine_rank):
    accelerate launch --config_file assessor/train/configs/accelerate_ddp.yaml \\
        --num_machines 8 --num_processes 64 --machine_rank $RANK \\
        --main_process_ip $MASTER_ADDR --main_process_port 29500 \\
        -m assessor.train --config assessor/train/configs/koniq_lora_7b.yaml
  change a value without editing the file, continue a stopped run:
    python -m assessor.train --config cfg.yaml --set grpo.steps=200 --set rollout.group_size=4 --resume auto

The config is YAML or JSON; unknown keys are errors. rollout.images_per_device is per process,
so the images per step grow with the number of processes. Logs: OUTPUT_DIR/train_log.jsonl
(one JSON record per step) and a console line per step; checkpoints: OUTPUT_DIR/checkpoints/;
the result: OUTPUT_DIR/final/ (LoRA adapter in peft format, or the model; with export_merged a
merged model folder usable as --model of the vlm backend).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m assessor.train",
        description=(
            "Train the Q-DeepSight critic with GRPO over its think-with-images trajectories "
            "(crop-and-zoom tool calls), rewarded by the Perceptual Curriculum Reward and with "
            "Evidence Gradient Filtering. Runs on one GPU, or many with accelerate launch."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="training config (YAML or JSON)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. grpo.learning_rate=5e-6 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        help="continue from a checkpoint folder, or 'auto' for the latest one in output_dir",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="read the config and the datasets, print what would be trained on, and stop (no model loaded)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the full config with defaults and stop"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .config import ConfigError, config_to_yaml, load_config
    from .data import DatasetError, load_datasets

    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_to_yaml(config), end="")
            return 0
        if not config.data.train:
            raise ConfigError("data.train is empty: list at least one dataset (layout and root)")
        if args.check:
            total = 0
            for ds in load_datasets(config.data.train, config.data.check_images):
                print(ds.summary())
                total += len(ds)
            print(
                f"{total} training images; model {config.model.path or '(not set)'}; output {config.output_dir}"
            )
            return 0
        if not config.model.path:
            raise ConfigError(
                "model.path is empty: set it to a local folder or a hub id (e.g. Qwen/Qwen2.5-VL-7B-Instruct)"
            )
        from .trainer import run

        run(config, resume=args.resume)
    except (ConfigError, DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if os.environ.get("QDS_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
