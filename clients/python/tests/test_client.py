"""The Python client against a real daemon: started by the Rust test
`daemon::python::the_python_client_drives_a_real_daemon`, which passes its
address and tokens in JOBVISOR_URL, JOBVISOR_TOKEN (submit role) and
JOBVISOR_READ_TOKEN (read role)."""

import os
import unittest

import jobvisor


class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.url = os.environ["JOBVISOR_URL"]
        self.c = jobvisor.Client(self.url, token=os.environ["JOBVISOR_TOKEN"])

    def test_submit_wait_result(self) -> None:
        job = self.c.submit("noop", 41, queue="default", priority=3, key="py-once")
        self.assertIsInstance(job.id, int)
        record = self.c.wait(job.id, timeout=30)
        self.assertEqual(record["state"], "succeeded")
        self.assertEqual(self.c.result(job.id)["output"], 41)
        self.assertEqual(self.c.get(job.id)["priority"], 3)
        again = self.c.submit("noop", 41, key="py-once")
        self.assertEqual((again.id, again.duplicate), (job.id, True))

    def test_submit_many_is_all_or_nothing(self) -> None:
        jobs = self.c.submit_many(
            [{"task": "noop", "input": 7}, {"task": "noop", "input": None, "input_from": ["#1"]}]
        )
        self.assertEqual(len(jobs), 2)
        self.assertEqual(self.c.wait(jobs[1].id)["state"], "succeeded")
        self.assertEqual(self.c.result(jobs[1].id)["output"], 7)
        before = self.c.list(limit=10000)["jobs"]
        with self.assertRaises(jobvisor.JobvisorError) as e:
            self.c.submit_many([{"task": "noop", "input": 1}, {"task": "no_such_task", "input": 1}])
        self.assertEqual((e.exception.status, e.exception.code), (400, "unknown_task"))
        self.assertEqual(len(self.c.list(limit=10000)["jobs"]), len(before))

    def test_cancel_retry_and_errors(self) -> None:
        job = self.c.submit("sleep", {"ms": 60000})
        with self.assertRaises(jobvisor.JobvisorError) as e:
            self.c.result(job.id)
        self.assertEqual(e.exception.code, "conflict")
        self.c.cancel(job.id)
        self.assertEqual(self.c.get(job.id)["state"], "cancelled")
        self.c.retry(job.id)
        self.c.cancel(job.id)
        with self.assertRaises(jobvisor.JobvisorError) as e:
            self.c.get(10**9)
        self.assertEqual((e.exception.status, e.exception.code), (404, "not_found"))

    def test_roles_are_enforced(self) -> None:
        reader = jobvisor.Client(self.url, token=os.environ["JOBVISOR_READ_TOKEN"])
        self.assertGreaterEqual(len(reader.workers()), 1)
        self.assertIn("workers", reader.stats())
        with self.assertRaises(jobvisor.JobvisorError) as e:
            reader.submit("noop", 1)
        self.assertEqual((e.exception.status, e.exception.code), (403, "permission_denied"))
        with self.assertRaises(jobvisor.JobvisorError) as e:
            jobvisor.Client(self.url, token="jv_wrong").stats()
        self.assertEqual(e.exception.status, 401)

    def test_events_resume_after_the_last_one_seen(self) -> None:
        job = self.c.submit("noop", 5)
        self.c.wait(job.id)
        seen = []
        for ev in self.c.events():
            seen.append(ev)
            if ev.kind == "job" and ev.data["id"] == job.id and ev.data["state"] == "succeeded":
                break
        mine = [e for e in seen if e.kind == "job" and e.data["id"] == job.id]
        self.assertEqual([e.data["state"] for e in mine], ["queued", "running", "succeeded"])
        resumed = next(iter(self.c.events(last_event_id=mine[0].id)))
        self.assertEqual(resumed.id, seen[seen.index(mine[0]) + 1].id)


if __name__ == "__main__":
    unittest.main()
