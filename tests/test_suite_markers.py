"""The suite's own conventions: tests that read ../shared/data are marked `data`; tests that train or
generate are marked `slow` (`make test-fast` leaves them out)."""


def test_a_test_that_reads_the_sample_photos_is_marked_data(request, data_dir):
    assert request.node.get_closest_marker("data") is not None


def test_a_test_without_the_sample_photos_is_not_marked_data(request):
    assert request.node.get_closest_marker("data") is None


def test_a_test_that_uses_trained_models_is_marked_slow(request, tiny_runs):
    assert request.node.get_closest_marker("slow") is not None


def test_a_quick_test_is_not_marked_slow(request):
    assert request.node.get_closest_marker("slow") is None


def test_every_training_and_pipeline_module_is_slow_whole():
    """The modules whose every test trains or draws carry the module-wide marker."""
    import importlib

    for name in (
        "hand_training",
        "train_vae",
        "hand_cli",
        "body_train",
        "hand_pipeline",
        "body_pipeline",
        "two_stage_pipeline",
        "two_stage_generate",
        "framing",
        "baseline",
    ):
        module = importlib.import_module(f"test_generation_{name}")
        assert module.pytestmark.name == "slow", name
