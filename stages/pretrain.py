"""Stage pretrain: toy ImageNet, the visual trunk trained on labelled stills of the toy glyphs.

python -m stages.pretrain  ->  models/pretrain/visual.pt (the trunk's state dict, torchvision names; what
                               model.visual_pretrained names), reports/pretrain.json (held-out accuracies: on
                               stills of pretrain.artwork and of the videos' artwork)

One stage for every dataset role, as one set of ImageNet weights serves both of the paper's datasets.
"""
from __future__ import annotations

import argparse
import sys
import time

from pipeline import paths
from pipeline.config import ConfigError, load_params
from pipeline.pretrain import run_pretrain
from pipeline.stage import StageError


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.pretrain")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        params = load_params(args.params)
        report = run_pretrain(paths.PRETRAIN.weights, paths.PRETRAIN.report, paths.PRETRAIN.run, params.model,
                              params.pretrain, params.data_seed)
    except (ConfigError, StageError) as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"pretrain: {len(report['classes'])} classes, {report['train_images']} training stills "
          f"({report['artwork']}), held-out accuracy {report['accuracy']:.3f}, on the videos' artwork "
          f"({report['video_artwork']}) "
          f"{report['accuracy_video_artwork']:.3f}; done in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
