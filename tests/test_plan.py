"""Scheduling policy without processes: batch sizes, who holds what, what a loss means."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from dicom_fastsend.engine.inventory import Pending
from dicom_fastsend.engine.plan import BATCH_FILES, MIN_BATCH_FILES, Batch, BatchBook, batch_files


def files(count: int, prefix: str = "/a") -> tuple[Pending, ...]:
    return tuple(Pending(f"{prefix}/{n:04d}.dcm", 100, 1.0) for n in range(count))


def test_a_small_run_spreads_over_every_executor() -> None:
    assert batch_files(100, 2) == 50
    assert batch_files(2000, 2) == BATCH_FILES
    assert batch_files(3, 4) == MIN_BATCH_FILES  # never a batch of one for want of files
    assert batch_files(0, 1) == MIN_BATCH_FILES


@given(st.integers(0, 10**7), st.integers(1, 256))
@example(14337, 56)  # a share of 256.02: over the cap once rounded up
def test_batch_sizes_stay_within_their_bounds(pending: int, executors: int) -> None:
    size = batch_files(pending, executors)
    assert MIN_BATCH_FILES <= size <= BATCH_FILES
    # Every executor gets a share, unless a share would be more than a batch
    # (ceiling: 14,337 files over 56 executors is 257 a share, over the cap).
    if MIN_BATCH_FILES <= -(-pending // executors) <= BATCH_FILES:
        assert size * executors >= pending


def test_pull_dispatch_with_fake_executors_accounts_for_each_file_once() -> None:
    book = BatchBook()
    batches = [Batch(n, files(5, f"/s{n}")) for n in range(4)]
    done: list[str] = []
    # Two executors pull in turn; each reports every file of its batch.
    for number, batch in enumerate(batches):
        executor = number % 2
        book.assign(executor, batch)
        for f in batch.files:
            book.file_done(executor, f.path)
            done.append(f.path)
        assert book.unfinished(executor) == ()
        assert book.batch_done(executor) == batch
    assert sorted(done) == sorted(f.path for b in batches for f in b.files)
    assert not book.busy


def test_a_lost_executor_hands_back_only_unfinished_files_once() -> None:
    book = BatchBook()
    batch = Batch(1, files(4))
    book.assign(0, batch)
    book.file_done(0, batch.files[0].path)
    retry, given_up = book.executor_lost(0)
    assert given_up == ()
    assert retry is not None and retry.files == batch.files[1:] and retry.attempt == 2
    assert book.next_retry() == retry
    # The second executor dies too, after one more file: the rest is given up.
    book.assign(1, retry)
    book.file_done(1, retry.files[0].path)
    again, given_up = book.executor_lost(1)
    assert again is None and given_up == retry.files[1:]
    assert not book.busy


def test_a_backend_that_retried_itself_gives_up_at_once() -> None:
    book = BatchBook()
    batch = Batch(1, files(3))
    book.assign(7, batch)
    retry, given_up = book.executor_lost(7, may_retry=False)
    assert retry is None and given_up == batch.files


def test_a_stop_drops_handed_back_batches_and_says_which_files() -> None:
    book = BatchBook()
    book.assign(0, Batch(1, files(3)))
    book.executor_lost(0)
    assert book.busy
    assert book.drop_retries() == files(3)
    assert not book.busy
    # An executor with nothing held loses nothing.
    assert book.executor_lost(5) == (None, ())


def test_an_executor_holding_two_batches_finishes_them_in_order() -> None:
    # A local worker asks for its next batch while it sends one (worker.py).
    book = BatchBook()
    first, second = Batch(1, files(3, "/a")), Batch(2, files(2, "/b"))
    book.assign(0, first)
    book.assign(0, second)
    assert book.file_done(0, second.files[0].path) == second.files[0]
    assert book.file_done(0, first.files[0].path) == first.files[0]
    assert book.unfinished(0) == first.files[1:] + second.files[1:]
    for f in first.files[1:]:
        book.file_done(0, f.path)
    assert book.batch_done(0) == first
    assert book.unfinished(0) == second.files[1:]
    # Lost while holding the second: its unfinished files go out once more.
    retry, given_up = book.executor_lost(0)
    assert given_up == () and retry is not None and retry.files == second.files[1:]
    assert retry.attempt == 2 and book.next_retry() == retry and not book.busy


def test_a_lost_executor_with_two_batches_hands_both_back() -> None:
    book = BatchBook()
    first, second = Batch(1, files(2, "/a")), Batch(2, files(2, "/b"))
    book.assign(3, first)
    book.assign(3, second)
    retry, given_up = book.executor_lost(3)
    assert given_up == () and retry is not None
    assert retry.files == first.files + second.files and retry.attempt == 2
