"""The awsgate demo (run it with ``scripts/demo``): a sample agent's day through the gateway.

Everything runs on loopback: moto stands in for AWS (with signature checking
on, so only the gateway's signature is accepted), the dev IdP issues the
agent's OIDC token, and the agent uses the stock AWS CLI with nothing but
HTTPS_PROXY, its CA bundle and a web identity token file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time

from addons.auth.devidp import DevIdp
from addons.devstack import BIN, ROOT, Gateway, Moto, agent_env, aws_cli, base_env

WORKDIR = ROOT / "var" / "demo"
GREEN, RED, YELLOW, DIM, RESET = "\033[32m", "\033[31m", "\033[33m", "\033[2m", "\033[0m"


def say(text: str) -> None:
    print(text, flush=True)


def step(env: dict[str, str], title: str, *args: str) -> None:
    done = aws_cli(env, *args)
    if done.returncode == 0:
        say(f"  {GREEN}allowed{RESET}  {title}")
    else:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        colour = YELLOW if "review" in reason else RED
        say(f"  {colour}refused{RESET}  {title}\n           {DIM}{reason}{RESET}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the gateway running")
    args = parser.parse_args()

    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    with Moto.running(WORKDIR) as moto:
        idp = DevIdp(WORKDIR / "idp-keys").serve("127.0.0.1", 0)
        config = {
            "certs": str(ROOT / "certs"),
            "policies": str(ROOT / "policies" / "default.yaml"),
            "approvals": {"wait": 20},
            "identity": {
                "issuers": [{"url": idp.url, "audience": "awsgate", "groups_claim": "groups"}]
            },
        }
        gateway = Gateway.configure(WORKDIR, moto, config)
        say(f"awsgate demo: moto as AWS at {moto.url} (signature checking on)")
        say(f"              dev OIDC issuer at {idp.url}")
        say(
            f"              gateway: awsgate run --config {gateway.config_path} "
            f"--port {gateway.port}"
        )
        gateway.start(moto, via_cli=True)
        try:
            run_agent(moto, gateway)
            show_records(gateway)
            if args.keep:
                keep_running(gateway)
        finally:
            gateway.stop()
            idp.stop()
    return 0


def run_agent(moto: Moto, gateway: Gateway) -> None:
    token_file = WORKDIR / "agent.token"
    token_file.write_text(
        DevIdp(WORKDIR / "idp-keys").token("demo-agent", groups=["demo-agents"], aud="awsgate")
    )
    env = agent_env(gateway, token_file=token_file)
    moto.client("s3").create_bucket(Bucket="prod-logs")  # something the agent must not delete
    payload = WORKDIR / "report.txt"
    payload.write_text("quarterly numbers\n")
    say("\nThe agent (AWS CLI v1, web identity token, HTTPS_PROXY) makes its calls:")
    step(
        env,
        "sts get-caller-identity (upstream sees the gateway's IAM user)",
        "sts",
        "get-caller-identity",
        "--query",
        "Arn",
        "--output",
        "text",
    )
    step(env, "s3 mb s3://demo-reports", "s3", "mb", "s3://demo-reports")
    step(env, "s3 cp report.txt s3://demo-reports/", "s3", "cp", str(payload), "s3://demo-reports/")
    step(env, "s3 ls s3://demo-reports/", "s3", "ls", "s3://demo-reports/")
    step(
        env,
        "secretsmanager create-secret demo-db",
        "secretsmanager",
        "create-secret",
        "--name",
        "demo-db",
        "--secret-string",
        "example",
    )
    step(env, "ec2 describe-instances", "ec2", "describe-instances")
    step(env, "s3 rb s3://prod-logs (rule no-prod-bucket-deletes)", "s3", "rb", "s3://prod-logs")
    title = "secretsmanager delete-secret demo-db (rule secret-deletes-need-review: held)"
    held = threading.Thread(
        target=step,
        args=(env, title, "secretsmanager", "delete-secret", "--secret-id", "demo-db"),
    )
    held.start()
    approve_when_pending(gateway)
    held.join()
    step(
        env,
        "iam create-access-key (credential minting, built-in deny)",
        "iam",
        "create-access-key",
        "--user-name",
        "someone",
    )
    anonymous = base_env(
        HTTPS_PROXY=gateway.proxy_url,
        AWS_CA_BUNDLE=str(gateway.ca_bundle),
        AWS_ACCESS_KEY_ID="AKIANOTFROMTHEGATEWAY",
        AWS_SECRET_ACCESS_KEY="x",
    )
    step(anonymous, "an agent with a long-lived key and no OIDC identity: s3 ls", "s3", "ls")
    buckets = [b["Name"] for b in moto.client("s3").list_buckets()["Buckets"]]
    say(f"\nmoto's own view: buckets {buckets} (prod-logs is still there)")


def approve_when_pending(gateway: Gateway) -> None:
    """An SRE approves the held call with her own OIDC token, as `awsgate approvals` does."""
    token_file = WORKDIR / "sre.token"
    token_file.write_text(
        DevIdp(WORKDIR / "idp-keys").token("sre-alice", groups=["sre"], aud="awsgate")
    )
    awsgate = [str(BIN / "awsgate"), "approvals"]
    config = ["--config", str(gateway.config_path)]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listed = subprocess.run(
            [*awsgate, "list", "--status", "pending", "--json", *config],
            capture_output=True,
            text=True,
            env=base_env(),
            timeout=60,
        )
        pending = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
        if pending:
            say(
                f"  {DIM}held: approval {pending[0]['id']} for {pending[0]['action']}; "
                f"sre-alice approves it with her own token{RESET}"
            )
            subprocess.run(
                [
                    *awsgate,
                    "approve",
                    pending[0]["id"],
                    "--reason",
                    "planned cleanup",
                    "--token-file",
                    str(token_file),
                    *config,
                ],
                capture_output=True,
                text=True,
                env=base_env(),
                timeout=60,
                check=True,
            )
            return
        time.sleep(0.5)


def show_records(gateway: Gateway) -> None:
    say("\nWhat the gateway recorded (awsgate audit search):")
    for command in ("search", "verify"):
        done = subprocess.run(
            [str(BIN / "awsgate"), "audit", command, "--config", str(gateway.config_path)],
            capture_output=True,
            text=True,
            env=base_env(),
            timeout=60,
        )
        say((done.stdout or done.stderr).rstrip())


def keep_running(gateway: Gateway) -> None:
    say("\nThe gateway keeps running (Ctrl-C to stop). Try it yourself:")
    say(f"  export HTTPS_PROXY={gateway.proxy_url} AWS_CA_BUNDLE={gateway.ca_bundle}")
    say(
        f"  export AWS_ROLE_ARN=arn:aws:iam::123456789012:role/agent "
        f"AWS_WEB_IDENTITY_TOKEN_FILE={WORKDIR / 'agent.token'}"
    )
    say("  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; aws s3 ls")
    say(f"  awsgate sessions list --config {gateway.config_path}")
    try:
        while gateway.process is not None and gateway.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
