"""The published API specifications of the SMS services (tests/data/specs/), read so that the
simulators check every request the gateway sends, and build every webhook they send, against
what the service itself publishes.

Two conventions of the published documents are read as their generators mean them: SMS Gate's
(swaggo) wraps an enum in `allOf` beside `type: object` (the enum's own type is meant), and
OpenAPI 3.0 writes `nullable: true` where JSON Schema has a "null" type."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

SPECS = Path(__file__).resolve().parent / "data" / "specs"  # copies, with their sources


def _as_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _as_json_schema(value) for key, value in node.items()}
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and "$ref" in all_of[0]:
        node.pop("type", None)
    if node.pop("nullable", False):
        kind = node.get("type")
        if isinstance(kind, str):
            node["type"] = [kind, "null"]
        elif "type" not in node:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


class Spec:
    def __init__(self, name: str) -> None:
        self.document = json.loads((SPECS / name).read_text(encoding="utf-8"))
        self.components = _as_json_schema(copy.deepcopy(self.document["components"]))

    def _validator(self, schema: dict[str, Any]) -> Any:
        root = {**schema, "components": self.components}
        return jsonschema_rs.Draft4Validator(root)

    def check(self, schema: dict[str, Any], data: Any, what: str) -> None:
        """AssertionError listing every way `data` departs from `schema`."""
        errors = [
            f"{'/'.join(str(p) for p in error.instance_path) or '(body)'}: {error.message}"
            for error in self._validator(_as_json_schema(schema)).iter_errors(data)
        ]
        assert not errors, f"{what} departs from the published specification: {errors}"

    def check_named(self, name: str, data: Any) -> None:
        self.check({"$ref": f"#/components/schemas/{name}"}, data, name)

    def operation(self, path: str, method: str) -> dict[str, Any]:
        return self.document["paths"][path][method.lower()]  # type: ignore[no-any-return]

    def check_request(self, path: str, method: str, body: Any) -> None:
        """The body of a request to `method path`, against the operation's request schema."""
        content = self.operation(path, method)["requestBody"]["content"]
        schema = next(iter(content.values()))["schema"]
        self.check(schema, body, f"{method} {path} request body")

    def check_parameters(self, path: str, method: str, query: dict[str, str]) -> None:
        """Every query parameter is one the operation declares, with a value of its type."""
        declared = {
            p["name"]: p.get("schema", {})
            for p in self.operation(path, method).get("parameters", [])
            if p["in"] == "query"
        }
        for name, value in query.items():
            assert name in declared, f"{method} {path} has no query parameter {name!r}"
            schema = declared[name]
            typed: Any = value
            if schema.get("type") == "integer":
                assert value.lstrip("-").isdigit(), f"{name}={value!r} is not an integer"
                typed = int(value)
            elif schema.get("type") == "boolean":
                assert value in ("true", "false"), f"{name}={value!r} is not a boolean"
                typed = value == "true"
            self.check(schema, typed, f"{method} {path} ?{name}")

    def check_response(self, path: str, method: str, status: int, body: Any) -> None:
        responses = self.operation(path, method)["responses"]
        assert str(status) in responses, f"{method} {path} declares no {status} answer"
        content = responses[str(status)].get("content") or {}
        if content and body is not None:
            schema = next(iter(content.values()))["schema"]
            self.check(schema, body, f"{method} {path} {status} answer")


SMSGATE_PAYLOADS = {
    "sms:received": "SmsReceivedPayload",
    "sms:sent": "SmsSentPayload",
    "sms:delivered": "SmsDeliveredPayload",
    "sms:failed": "SmsFailedPayload",
    "system:ping": "SystemPingPayload",
}


def check_smsgate_event(body: dict[str, Any]) -> None:
    """A webhook body against WebHookEvent, its payload against the schema of its event: the
    published `oneOf` of payloads cannot hold for any payload (their properties overlap, so a
    received-text payload matches several), so the event names the one it must match."""
    spec = smsgate()
    envelope = copy.deepcopy(spec.document["components"]["schemas"]["WebHookEvent"])
    payload = SMSGATE_PAYLOADS[body["event"]]
    envelope["properties"]["payload"] = {"$ref": f"#/components/schemas/{payload}"}
    spec.check(envelope, body, f"{body['event']} webhook")


@cache
def smsgate() -> Spec:
    return Spec("smsgate/swagger.json")


@cache
def twilio() -> Spec:
    return Spec("twilio/messages.json")
