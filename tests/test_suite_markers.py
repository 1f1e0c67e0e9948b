"""The suite's own conventions: tests that read ../shared/data are marked `data`."""


def test_a_test_that_reads_the_sample_photos_is_marked_data(request, data_dir):
    assert request.node.get_closest_marker("data") is not None


def test_a_test_without_the_sample_photos_is_not_marked_data(request):
    assert request.node.get_closest_marker("data") is None
