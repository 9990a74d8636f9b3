"""The run: the asyncio worker pool between the ledger and fal.

    run.py          run_job: validate, plan, start the queue (or the embedded simulator), dispatch
    dispatch.py     items from the ledger to item tasks under the admission limits
    admission.py    in-flight slots and the submit rate (AIMD on 429s)
    item.py         one item: admission, submit (or re-attach), wait
    finish.py       result, downloads, completion; every item transition (group commit)
    waiting.py      adaptive polling and the status stream; webhook_wait.py: webhooks
    policy.py       the retry policy and the one retry loop
    budget.py       the budget cap; uploads.py: local inputs; planning.py: manifest → ledger
    webhook_serve.py  `webhook serve`: finishes a detached run's items from fal's deliveries

It may import everything below it (report, job, ledger, outputs, manifest, fal, schema) and
starts the embedded simulator; only the CLI imports it.
"""
