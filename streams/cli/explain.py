"""`segments explain ID`: why a customer is or is not in each segment (SPEC section 6).

Online it asks a worker (`GET /customers/{id}/explain`, routed by the workers to
the one that owns the customer); offline (`--input`) it replays a file and
explains from the replayed state. Both print the same document.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click
import orjson

from streams.cli.common import as_of_option, settings_or_exit

CHECK = {True: "yes", False: "no "}


@click.command("explain")
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON document")
@click.option(
    "--worker",
    "worker_url",
    default=None,
    help="a worker's base URL [default: http://SEGMENTS_WEB_HOST:SEGMENTS_WEB_PORT]",
)
@click.option("--input", "input_path", default=None, help="explain offline: replay this file")
@click.option("--as-of", "as_of", default=None, help="offline: the instant to explain at")
@click.option(
    "--rules",
    "rules_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="offline: the rule file [default: SEGMENTS_RULES]",
)
def explain_command(
    customer_id: str,
    as_json: bool,
    worker_url: str | None,
    input_path: str | None,
    as_of: str | None,
    rules_path: str | None,
) -> None:
    """Explain CUSTOMER_ID's segments: each rule, the metric values, which comparisons hold.

    Asks a worker (token from SEGMENTS_API_TOKEN), or with --input and --as-of
    replays the events without Kafka and explains the state at the end.
    """
    if input_path is not None:
        if as_of is None:
            raise click.UsageError("--input needs --as-of: the instant to explain at")
        document = _offline(customer_id, input_path, as_of, rules_path)
    else:
        if as_of is not None or rules_path is not None:
            raise click.UsageError("--as-of and --rules go with --input (offline mode)")
        document = _online(customer_id, worker_url)
    if as_json:
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(document), nl=False)


def _offline(customer_id: str, input_path: str, as_of: str, rules_path: str | None) -> Any:
    from segments.explain import explain
    from segments.replay import read_lines, run
    from segments.rules.evaluator import compile_rules
    from streams.cli.validate import load_ruleset_or_exit

    instant = as_of_option(as_of)
    assert instant is not None
    path = rules_path if rules_path is not None else settings_or_exit().rules
    rules = compile_rules(load_ruleset_or_exit(path))
    _, states = run(
        enumerate(read_lines(input_path), start=1),
        rules,
        lambda change, line: None,
        lambda record, line, instant: None,
        as_of=instant,
        # events dated too far after this run are refused, as replay and the worker do
        wall=time.time_ns() // 1000,
    )
    state = states.get(customer_id)
    if state is None:
        raise click.ClickException(f"customer {customer_id!r} does not appear in {input_path}")
    return explain(state, rules, instant)


def _online(customer_id: str, worker_url: str | None) -> Any:
    settings = settings_or_exit()
    if worker_url is None:
        host = "127.0.0.1" if settings.web_host in ("0.0.0.0", "::") else settings.web_host
        worker_url = f"http://{host}:{settings.web_port}"
    url = f"{worker_url.rstrip('/')}/customers/{urllib.parse.quote(customer_id, safe='')}/explain"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    token = settings.api_token_value
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = orjson.loads(body).get("message") or body.decode("utf-8", "replace")
        except (orjson.JSONDecodeError, AttributeError):
            message = body.decode("utf-8", "replace")
        raise click.ClickException(f"the worker answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise click.ClickException(f"the worker at {worker_url} did not answer: {reason}") from None


def render(document: dict[str, Any]) -> str:
    """The explanation as text: per segment, membership, each rule and its comparisons."""
    lines = [
        f"customer {document['customer_id']} at {document['as_of']} "
        f"(rules version {document['rules_version']})",
    ]
    for segment in document["segments"]:
        lines.append("")
        since = f" since {segment['since']}" if segment["member"] else ""
        status = "member" + since if segment["member"] else "not a member"
        lines.append(f"{segment['name']}: {status}")
        if segment["description"]:
            lines.append(f"  ({segment['description']})")
        for key in ("when", "exit_when"):
            condition = segment[key]
            if condition is None:
                continue
            verdict = "holds" if condition["holds"] else "does not hold"
            lines.append(f"  {key}: {condition['rule']}  -> {verdict}")
            lines.extend(_leaves(condition["tree"], "    "))
        if segment["min_dwell"] is not None:
            lines.append(f"  min_dwell: {segment['min_dwell']}")
        if segment["metrics"]:
            shown = ", ".join(f"{k}={_shown(v)}" for k, v in segment["metrics"].items())
            lines.append(f"  metrics: {shown}")
    return "\n".join(lines) + "\n"


def _leaves(node: dict[str, Any], indent: str) -> list[str]:
    """One line per comparison and in_segment, in source order."""
    if node["op"] == "not" and node["args"][0]["op"] not in ("and", "or", "not"):
        # `not` of one comparison: one line, with the truth of the whole
        (line,) = _leaves(node["args"][0], indent)
        mark = CHECK[node["holds"]]
        return [f"{indent}{mark} not {line[len(indent) + len(mark) + 1 :]}"]
    if node["op"] in ("and", "or", "not"):
        return [line for part in node["args"] for line in _leaves(part, indent)]
    mark = CHECK[node["holds"]]
    if node["op"] == "in_segment":
        return [f"{indent}{mark} {node['text']}"]
    if node["op"] == "between":
        values = (
            f"{_operand(node['operand'])} between {_operand(node['low'])} "
            f"and {_operand(node['high'])}"
        )
    else:
        values = f"{_operand(node['left'])} {node['op']} {_operand(node['right'])}"
    return [f"{indent}{mark} {node['text']}    [{values}]"]


def _operand(value: dict[str, Any]) -> str:
    return "undefined" if value["undefined"] else _shown(value["value"])


def _shown(value: Any) -> str:
    """A long exact quotient is shown to 6 places here; --json keeps every digit."""
    if value is None:
        return "undefined"
    if isinstance(value, str) and "." in value:
        whole, _, fraction = value.partition(".")
        if len(fraction) > 6:
            return f"{whole}.{fraction[:6]}…"
    return str(value)
