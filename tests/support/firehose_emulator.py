"""A Firehose-compatible endpoint for fault and load tests: it keeps every record in arrival order, counts records
and bytes, and misbehaves on request.

    python -m tests.support.firehose_emulator --port 4573 --control-port 4574

The data port speaks Firehose's JSON 1.1 protocol (PutRecordBatch, PutRecord, DescribeDeliveryStream); any stream
name exists. The control port takes JSON:

- `GET /records?stream=S&after=N`: records after arrival position N, base64-encoded;
  `&with_times=1` answers `[[t, base64], ...]` instead, t being the record's arrival (`time.time()` when stored);
- `GET /stats`: records, bytes and requests per stream, and the calls answered with each fault;
- `POST /behaviour`: `{"throttle": 0.3, "fail_entries": 0.1, "error_500": 0.0, "hang_seconds": 0, "hang": 0.0,
  "refuse": false}`; probabilities per request (or per entry for `fail_entries`); `refuse` closes the data port.
"""

from __future__ import annotations

import argparse
import array
import base64
import json
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT_ID = "123456789012"
TARGET_PREFIX = "Firehose_20150804."


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, list[bytes]] = defaultdict(list)
        self.arrivals: dict[str, array.array] = defaultdict(lambda: array.array("d"))  # time.time() per record
        self.bytes: dict[str, int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)
        self.faults: dict[str, int] = defaultdict(int)
        self.behaviour: dict[str, Any] = {}
        self.random = random.Random(7)

    def chance(self, name: str) -> bool:
        probability = float(self.behaviour.get(name) or 0)
        return probability > 0 and self.random.random() < probability


STATE = State()


class DataHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes: with Nagle's algorithm the body would wait for the client's
    # delayed ACK (about 40 ms on Linux) on every kept-alive request, which is not Firehose's latency.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict, error_type: str | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, error_type: str, message: str) -> None:
        self._answer(status, {"__type": error_type, "message": message}, error_type)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if STATE.behaviour.get("refuse"):
            # The listener is closed; a kept-alive connection is dropped without an answer.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        operation = self.headers.get("X-Amz-Target", "").removeprefix(TARGET_PREFIX)
        stream = body.get("DeliveryStreamName", "")
        if operation == "DescribeDeliveryStream":
            return self._answer(200, describe(stream))
        if operation not in ("PutRecordBatch", "PutRecord"):
            return self._error(400, "InvalidArgumentException", f"Unsupported operation {operation}.")
        with STATE.lock:
            STATE.requests[stream] += 1
            hang = STATE.chance("hang")
            throttle = not hang and STATE.chance("throttle")
            error_500 = not hang and not throttle and STATE.chance("error_500")
            for name, happened in (("hang", hang), ("throttle", throttle), ("error_500", error_500)):
                if happened:
                    STATE.faults[name] += 1
        if hang:
            time.sleep(float(STATE.behaviour.get("hang_seconds") or 30))
            return self._error(500, "InternalFailure", "The request hung.")
        if throttle:
            return self._error(503, "ServiceUnavailableException", "Slow down. Rate exceeded for delivery stream.")
        if error_500:
            return self._error(500, "InternalFailure", "Internal service failure.")
        if operation == "PutRecord":
            self._store(stream, [base64.b64decode(body["Record"]["Data"])])
            return self._answer(200, {"RecordId": str(uuid.uuid4()), "Encrypted": False})
        responses, accepted = [], []
        with STATE.lock:
            failing = [STATE.chance("fail_entries") for _ in body["Records"]]
            STATE.faults["failed_entries"] += sum(failing)
        for record, fails in zip(body["Records"], failing, strict=True):
            if fails:
                responses.append({"ErrorCode": "InternalFailure", "ErrorMessage": "Internal service failure."})
            else:
                accepted.append(base64.b64decode(record["Data"]))
                responses.append({"RecordId": str(uuid.uuid4())})
        self._store(stream, accepted)
        self._answer(200, {"FailedPutCount": sum(failing), "Encrypted": False, "RequestResponses": responses})

    @staticmethod
    def _store(stream: str, records: list[bytes]) -> None:
        with STATE.lock:
            STATE.records[stream].extend(records)
            STATE.arrivals[stream].extend([time.time()] * len(records))
            STATE.bytes[stream] += sum(len(record) for record in records)


def describe(stream: str) -> dict:
    return {
        "DeliveryStreamDescription": {
            "DeliveryStreamName": stream,
            "DeliveryStreamARN": f"arn:aws:firehose:us-east-1:{ACCOUNT_ID}:deliverystream/{stream}",
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamType": "DirectPut",
            "VersionId": "1",
            "CreateTimestamp": 0,
            "Destinations": [],
            "HasMoreDestinations": False,
        }
    }


class DataServer:
    """The Firehose port, which can be closed (connections refused) and opened again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.server: ThreadingHTTPServer | None = None
        self.open()

    def open(self) -> None:
        if self.server is None:
            self.server = ThreadingHTTPServer(self.address, DataHandler)
            self.server.daemon_threads = True
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def control_handler(data: DataServer) -> type[BaseHTTPRequestHandler]:
    class ControlHandler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            params = dict(item.split("=", 1) for item in query.split("&") if "=" in item)
            with STATE.lock:
                if path == "/records":
                    stream, after = params.get("stream", ""), int(params.get("after", 0))
                    records = STATE.records[stream][after:]
                    if params.get("with_times") in ("1", "true"):
                        pairs = zip(STATE.arrivals[stream][after:], records, strict=True)
                        return self._json([[at, base64.b64encode(record).decode()] for at, record in pairs])
                    return self._json([base64.b64encode(record).decode() for record in records])
                if path == "/stats":
                    return self._json(
                        {
                            "streams": {
                                name: {
                                    "records": len(items),
                                    "bytes": STATE.bytes[name],
                                    "requests": STATE.requests[name],
                                }
                                for name, items in STATE.records.items()
                            },
                            "faults": dict(STATE.faults),
                            "behaviour": STATE.behaviour,
                        }
                    )
            self.send_error(404)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path == "/behaviour":
                with STATE.lock:
                    STATE.behaviour = body
                data.close() if body.get("refuse") else data.open()
                return self._json(STATE.behaviour)
            if self.path == "/reset":
                with STATE.lock:
                    STATE.records.clear()
                    STATE.arrivals.clear()
                    STATE.bytes.clear()
                    STATE.requests.clear()
                    STATE.faults.clear()
                return self._json({})
            self.send_error(404)

    return ControlHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4573)
    parser.add_argument("--control-port", type=int, default=4574)
    args = parser.parse_args()
    data = DataServer(args.host, args.port)
    control = ThreadingHTTPServer((args.host, args.control_port), control_handler(data))
    print(f"Firehose emulator on http://{args.host}:{args.port}, control on http://{args.host}:{args.control_port}")
    control.serve_forever()


if __name__ == "__main__":
    main()
