"""Sign in, start a published workflow, and stream its events until it ends.

    pip install -r requirements.txt
    AGENTPLANE_URL=http://127.0.0.1:8000 AGENTPLANE_EMAIL=... AGENTPLANE_PASSWORD=... \
        python run.py WORKFLOW_ID '{"name": "Ada"}'

(or AGENTPLANE_TOKEN=<access token or API key> instead of e-mail and password).
Speaks graphql-transport-ws directly with the `websockets` package; the HTTP calls use
only the standard library. Exits 0 when the execution SUCCEEDED, 1 otherwise.
"""

import asyncio
import json
import os
import sys
import urllib.request

import websockets

BASE = os.environ.get("AGENTPLANE_URL", "http://127.0.0.1:8000")


def gql(query, variables, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{BASE}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers=headers,
        method="POST",
    )
    with urllib.request.urlopen(req) as resp:
        body = json.load(resp)
    if body.get("errors"):
        e = body["errors"][0]
        raise SystemExit(f"{e.get('extensions', {}).get('code', 'ERROR')}: {e['message']}")
    return body["data"]


async def watch(execution_id, token):
    url = BASE.replace("http", "ws", 1) + "/graphql/ws"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {token}"}}))
        ack = json.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            raise SystemExit(f"not acknowledged: {ack}")
        await ws.send(json.dumps({
            "id": "1", "type": "subscribe",
            "payload": {
                "query": "subscription($id: ID!) { executionUpdated(id: $id) "
                         "{ sequence kind status stepId stepStatus error } }",
                "variables": {"id": execution_id},
            },
        }))
        final = None
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif msg["type"] == "next":
                if msg["payload"].get("errors"):
                    raise SystemExit(msg["payload"]["errors"][0]["message"])
                u = msg["payload"]["data"]["executionUpdated"]
                step = f" {u['stepId']}={u['stepStatus']}" if u["stepId"] else ""
                print(f"#{u['sequence']} {u['kind']} {u['status']}{step}", flush=True)
                final = u["status"]
            elif msg["type"] in ("complete", "error"):
                break
        return final


def main():
    if len(sys.argv) < 2:
        raise SystemExit("usage: python run.py WORKFLOW_ID [INPUT_JSON]")
    workflow_id = sys.argv[1]
    execution_input = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    token = os.environ.get("AGENTPLANE_TOKEN")
    if not token:
        data = gql("mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                   {"i": {"email": os.environ["AGENTPLANE_EMAIL"],
                          "password": os.environ["AGENTPLANE_PASSWORD"]}})
        token = data["login"]["accessToken"]
    started = gql("mutation($i: StartExecutionInput!) { startExecution(input: $i) "
                  "{ execution { id status } } }",
                  {"i": {"workflowId": workflow_id, "input": execution_input}}, token)
    execution_id = started["startExecution"]["execution"]["id"]
    print(f"started {execution_id}", flush=True)
    final = asyncio.run(watch(execution_id, token))
    print(f"finished {final}")
    sys.exit(0 if final == "SUCCEEDED" else 1)


if __name__ == "__main__":
    main()
