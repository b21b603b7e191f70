"""The run's configuration without torch or ray: the one summary a finished run prints, from the CLI or a job."""

from synthgen.generate.config import RunSummary


def test_a_run_that_made_everything_says_so_in_one_line_after_its_actors():
    summary = RunSummary("out/ds", 300, 300, 3 * 1024 * 1024, 2.0, generate_seconds=1.5, lanes=[2], device="cpu")
    assert summary.report().splitlines() == [
        "ran 1 actor(s) x 2 lane(s) on cpu",
        "done: 300 images (300 in the dataset), 3.0 MB, 2.0 s (200 images/s while generating) -> out/ds"]


def test_a_resumed_run_names_its_new_images_and_a_finished_one_has_nothing_to_do():
    resumed = RunSummary("ds", 400, 100, 2048, 1.0, generate_seconds=0.5)
    assert resumed.report() == "done: 100 new images (400 in the dataset), 2.0 KB, 1.0 s (200 images/s while " \
                               "generating) -> ds"
    assert RunSummary("ds", 400, 0, 2048, 0.1).report() == "nothing to do: ds already holds all 400 images (2.0 KB)"
