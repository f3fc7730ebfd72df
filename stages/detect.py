"""detect stage: boxes on the evaluation frames (`python -m stages.detect <dataset>`)."""
from pipeline import paths
from pipeline.config import Params
from pipeline.detect import run_detect
from pipeline.stage import run_stage


def body(params: Params, dataset: str) -> None:
    written = paths.detect(dataset)
    report = run_detect(
        features_dir=paths.features(dataset),
        boxes_path=written.boxes,
        weights_path=written.weights,
        report_path=written.report,
        run_path=written.run,
        params=params.detect,
        source=params.datasets[dataset].source,
        seed=params.data_seed,
    )
    map50 = "n/a" if report["map50"] is None else f"{report['map50']:.3f}"
    print(
        f"detect@{dataset}: {report['images']} evaluation frames, {report['boxes']} boxes kept, "
        f"{report['train_images']} training frames, mAP50 {map50}"
    )


if __name__ == "__main__":
    run_stage("detect", body)
