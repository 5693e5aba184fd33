"""The launch files: the cluster study validates, the Ray cluster launcher config passes Ray's schema."""

from __future__ import annotations

from pathlib import Path

import yaml

from search.pipeline import load_pipeline

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_the_cluster_study_is_a_valid_pipeline_config() -> None:
    pipeline = load_pipeline(DEPLOY / "study.yaml", materialise_demo=False)
    assert pipeline.config.storage_path.startswith("/mnt/")
    assert pipeline.pretrain.config.tune.gpus_per_trial >= 1


def test_the_ray_up_config_passes_rays_own_schema() -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text()))


def test_the_kuberay_manifests_are_a_rayjob_and_its_shared_volume() -> None:
    job = yaml.safe_load((DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert "medseg-search pipeline" in job["spec"]["entrypoint"]
    (claim,) = yaml.safe_load_all((DEPLOY / "kuberay-pvc.yaml").read_text())
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
