"""What a person reads about a job: the HTML contact sheet, its thumbnails, the status table.

    sheet.py       report.html from the ledger (thumbnails made in threads)
    page.py        the page around the records; its CSS and JS are package data (assets/)
    compare.py     a comparison of endpoints: the Compare view's columns, costs and totals
    thumbnails.py  input and output thumbnails
    status.py      `firered-batch status`: counts, failures, the latest run, spend

It reads the ledger and the job's settings; it never imports the pipeline or the CLI.
"""

from batch.report.sheet import REPORT_NAME, Report, report_for, write_report, write_report_quietly
from batch.report.status import JobStatus, job_status

__all__ = [
    "REPORT_NAME",
    "JobStatus",
    "Report",
    "job_status",
    "report_for",
    "write_report",
    "write_report_quietly",
]
