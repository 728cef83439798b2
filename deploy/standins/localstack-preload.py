"""TEST SCAFFOLDING: the stand-in LocalStack's init hook (runs inside the image, on LocalStack's Python 3.10).

Waits for the server, creates login-queue and sends the bodies of the JSON file given (written at image build
from fetch_etl.local.synthetic with a fixed seed, so the Compose check knows every clear value). The image's boto3
is 2022's and speaks SQS's query protocol, as the server does.
"""

import json
import sys
import time

import boto3

ENDPOINT = "http://127.0.0.1:4566"


def main(path: str) -> None:
    sqs = boto3.client(
        "sqs", endpoint_url=ENDPOINT, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            sqs.list_queues()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    url = sqs.create_queue(QueueName="login-queue")["QueueUrl"]
    with open(path) as f:
        bodies = json.load(f)
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
        failed = sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
        if failed:
            raise SystemExit(f"preload: {len(failed)} messages not sent: {failed[0]}")
    print(f"preload: {len(bodies)} messages sent to {url}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
