"""The scheduler as pure code: grouping, batches, dispatch, worker loss. No processes."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dicom_fastsend.header import FileInfo
from dicom_fastsend.plan import Batch, Dispatcher, group_by_study, make_batches, pack_tasks


def info(path: str, study: str, size: int) -> FileInfo:
    return FileInfo(
        path=path,
        size=size,
        mtime=0.0,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.2.3.{abs(hash(path)) % 10**9}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        study_instance_uid=study,
        dataset_offset=132,
    )


def archive(sizes: dict[str, list[int]]) -> list[FileInfo]:
    return [
        info(f"/{study}/{n:04d}.dcm", study, size)
        for study, file_sizes in sizes.items()
        for n, size in enumerate(file_sizes)
    ]


def test_group_by_study_keeps_every_file_once_and_sorts_paths() -> None:
    files = archive({"2": [5, 5], "1": [3], "": [1]})
    studies = group_by_study(reversed(files))
    assert [s.study_instance_uid for s in studies] == ["", "1", "2"]
    assert [f.path for f in studies[2].files] == ["/2/0000.dcm", "/2/0001.dcm"]
    assert sum(len(s.files) for s in studies) == len(files)


def test_batches_go_largest_first() -> None:
    batches = make_batches(group_by_study(archive({"a": [1] * 3, "b": [10] * 3, "c": [5] * 3})), 1)
    assert [b.study_instance_uid for b in batches] == ["b", "c", "a"]


def test_one_process_never_splits_a_study() -> None:
    batches = make_batches(group_by_study(archive({"huge": [100] * 50, "small": [1]})), 1)
    assert len(batches) == 2


def test_a_study_above_a_quarter_of_the_fair_share_is_split_evenly() -> None:
    # One study holds 90% of the bytes; with 4 workers a slice is at most
    # 1000 / 4 / 4 = 62.5 bytes: the huge study goes in 15 slices of 6 files.
    files = archive({"huge": [10] * 90, "s1": [10] * 5, "s2": [10] * 5})
    batches = make_batches(group_by_study(files), 4)
    huge = [b for b in batches if b.study_instance_uid == "huge"]
    assert len(huge) == 15  # ceil(900 / 62.5)
    assert all(b.size == 60 for b in huge)
    assert len([b for b in batches if b.study_instance_uid != "huge"]) == 2  # kept whole
    sent = [f.path for b in huge for f in b.files]
    assert sent == sorted(sent) and len(sent) == 90  # order kept, nothing lost


def simulate_pull(batches: list[Batch], workers: int) -> dict[int, int]:
    """Simulated time, one unit per byte: whoever is free first pulls the next batch.

    Returns when each worker found nothing left to take.
    """
    dispatcher = Dispatcher.of(batches)
    busy_until = dict.fromkeys(range(workers), 0)
    finished: dict[int, int] = {}
    while busy_until:
        worker = min(busy_until, key=lambda w: busy_until[w])
        if worker in dispatcher.held:
            dispatcher.batch_done(worker)
        batch = dispatcher.next_for(worker)
        if batch is None:
            finished[worker] = busy_until.pop(worker)
            continue
        busy_until[worker] += batch.size
    assert dispatcher.idle
    return finished


def test_equal_studies_fewer_than_twice_the_workers_still_balance() -> None:
    # The bench's 20 ms RTT case: 10 studies of 100 small files, 8 workers.
    files = archive({f"s{i}": [1] * 100 for i in range(10)})
    finish = simulate_pull(make_batches(group_by_study(files), 8), 8)
    # Whole studies would end at 200 (two workers take two); slices end at the mean.
    assert max(finish.values()) == 125


@given(
    st.dictionaries(
        st.text("abc", min_size=1, max_size=3),
        st.lists(st.integers(1, 10_000), min_size=1, max_size=20),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 8),
)
def test_every_file_is_in_exactly_one_batch(sizes: dict[str, list[int]], workers: int) -> None:
    files = archive(sizes)
    batches = make_batches(group_by_study(files), workers)
    counted = Counter(f.path for b in batches for f in b.files)
    assert counted == Counter(f.path for f in files)
    assert [b.batch_id for b in batches] == list(range(len(batches)))
    assert all(len({f.study_instance_uid for f in b.files}) == 1 for b in batches)


def test_pull_dispatch_balances_fake_workers() -> None:
    """LPT list scheduling: within 4/3 of the optimum, itself at least total / 3."""
    files = archive({f"s{i}": [i + 1] * 10 for i in range(20)})
    finish = simulate_pull(make_batches(group_by_study(files), 3), 3)
    total = sum(f.size for f in files)
    assert max(finish.values()) <= total / 3 * 4 / 3 + 1


def test_a_lost_worker_hands_back_only_unfinished_files_once() -> None:
    files = archive({"a": [1] * 4, "b": [1] * 2})
    dispatcher = Dispatcher.of(make_batches(group_by_study(files), 1))  # whole studies
    batch = dispatcher.next_for(7)
    assert batch is not None and batch.study_instance_uid == "a"
    dispatcher.file_done(7, batch.files[0].path)
    retry, given_up = dispatcher.worker_lost(7)
    assert given_up == ()
    assert retry is not None and retry.attempt == 2
    assert [f.path for f in retry.files] == [f.path for f in batch.files[1:]]
    # The retry goes first, to another worker.
    assert dispatcher.next_for(8) == retry
    # If that worker dies too, the files are given up on, not passed on forever.
    retry2, given_up2 = dispatcher.worker_lost(8)
    assert retry2 is None and [f.path for f in given_up2] == [f.path for f in retry.files]


def test_stop_returns_what_will_not_be_sent() -> None:
    files = archive({"a": [1] * 2, "b": [1] * 3})
    dispatcher = Dispatcher.of(make_batches(group_by_study(files), 1))
    first = dispatcher.next_for(0)
    assert first is not None
    left = dispatcher.stop()
    assert {f.path for f in left} | {f.path for f in first.files} == {f.path for f in files}
    assert dispatcher.next_for(1) is None


@given(
    sizes=st.dictionaries(
        st.text("abc", min_size=1, max_size=3),
        st.lists(st.integers(1, 1000), min_size=1, max_size=8),
        max_size=12,
    ),
    count=st.integers(1, 9),
)
def test_pack_tasks_holds_every_batch_once_and_balances(
    sizes: dict[str, list[int]], count: int
) -> None:
    batches = make_batches(group_by_study(archive(sizes)), 2)
    tasks = pack_tasks(batches, count)
    assert len(tasks) == min(count, len(batches))
    packed = [b.batch_id for task in tasks for b in task]
    assert sorted(packed) == sorted(b.batch_id for b in batches)
    assert all(task for task in tasks)
    # Greedy on sorted sizes: no task exceeds another by more than its largest batch.
    totals = [sum(b.size for b in task) for task in tasks]
    assert totals == sorted(totals, reverse=True)
    if totals:
        largest = max(b.size for b in batches)
        assert totals[0] - totals[-1] <= largest


def test_pack_tasks_keeps_several_studies_per_task() -> None:
    batches = make_batches(group_by_study(archive({str(n): [10] for n in range(8)})), 2)
    tasks = pack_tasks(batches, 2)
    assert [len(task) for task in tasks] == [4, 4]
    # Each task lists its batches in plan order, so associations follow the plan.
    assert all([b.batch_id for b in task] == sorted(b.batch_id for b in task) for task in tasks)
