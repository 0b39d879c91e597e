"""A second, separate Kubeflow pipeline: batch scoring with a published model.

    predict_videos(model_uri, videos, mode, top_k, workers) -> results (JSON Lines Dataset)

One step, the `sign2text predict-batch` step (components/steps.py:predict_batch) as the
component pipelines/kfp_components.py:predict_videos. Not part of the training pipeline (its
compiled spec, sign2text.yaml, is unchanged); compile it with the KFP SDK:

    from kfp import compiler
    from pipelines.batch_scoring import build_batch_pipeline
    compiler.Compiler().compile(build_batch_pipeline("REGISTRY/sign2text-components:TAG"),
                                "sign2text-batch.yaml")

Object store credentials come from the same Secret as the training pipeline's (S3_SECRET).
"""

from kfp import dsl

from pipelines.kfp_components import DEFAULT_IMAGE, build
from pipelines.sign2text import _with_s3

NAME = "sign2text-batch"
CPU, MEMORY = "4", "8G"


def build_batch_pipeline(image: str = DEFAULT_IMAGE):
    """The batch-scoring pipeline function for components running in `image`."""
    c = build(image)

    @dsl.pipeline(name=NAME, description=__doc__.splitlines()[0])
    def sign2text_batch(
        model_uri: str = "s3://sign2text/models/sign2text/production/",
        videos: str = "s3://sign2text/batch/videos/",
        mode: str = "word",
        top_k: int = 5,
        workers: int = 2,
    ):
        """model_uri: a published model package; videos: the s3:// prefix to score (every
        .mp4 .webm .avi .mov .mkv under it); mode: word or sentence; workers: processes,
        each loading the model (2: one per 2 of the step's CPU cores)."""
        task = c.predict_videos(
            model_uri=model_uri, videos=videos, mode=mode, top_k=top_k, workers=workers
        )
        task.set_cpu_request(CPU).set_cpu_limit(CPU)
        task.set_memory_request(MEMORY).set_memory_limit(MEMORY)
        task.set_caching_options(False)  # the prefix's content can change under the same URI
        _with_s3(task)

    return sign2text_batch
