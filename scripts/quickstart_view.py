"""Pretty-prints what the quick start reads over REST: `events` (NDJSON on stdin) or `status` (JSON on stdin)."""

import json
import sys


def events() -> None:
    for line in sys.stdin:
        event = json.loads(line)
        if event["type"] == "EVENT_TYPE_HEARTBEAT":
            continue
        progress = event["progress"]
        bar = "#" * (progress // 5) + "." * (20 - progress // 5)
        kind = event["type"].removeprefix("EVENT_TYPE_").lower()
        print(f"[{bar}] {progress:3d}%  #{event['sequence']:<3} {kind} {event['phase']}  {event['message'][:90]}")
        sys.stdout.flush()


def status() -> None:
    s = json.load(sys.stdin)
    result = s.get("result", {})
    print("state:", s["state"], " progress:", s["progress"], " phases:", ", ".join(s["phases_completed"]))
    for f in result.get("generated_code", []):
        print(f"  file: {f['path']} ({len(f['content'])} bytes)")
    report = result.get("test_report", {})
    print("tests run in the sandbox:", report.get("passed", 0), "passed,", report.get("failed", 0), "failed")
    print("usage:", json.dumps(result.get("usage", {})))


if __name__ == "__main__":
    {"events": events, "status": status}[sys.argv[1]]()
