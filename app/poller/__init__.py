"""The Auth0 Management API poller: read tenant logs from the checkpoint, page after page, and store
each page through the same store as the stream.

Every page is fetched outside any transaction, then stored together with the checkpoint that ends it
in one transaction, so a crash at any point re-reads a page and never skips one. Only one pass runs
at a time (lock.hold_pass_lock). Faults end the pass with a logged error and a failed run; they
never end the process.

command (`logrelay poll`) and loop (POLL_SCHEDULE) run poll.poll_once, which takes the lock and runs
a passes.Pass, which reads through a fetching.Fetcher; state, runs, lease, lock and owners keep the
poller's tables, status shows them.
"""
