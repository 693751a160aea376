"""Dedicated endpoints through the real ``together`` SDK against the fake: hardware, deploy, serve, stop, delete,
the per-minute bill, the record that survives a crash, and tear-down on errors and interrupts."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from together import Together

from distill.errors import UsageError
from distill.servers.together import FakeTogether, ManualClock
from trainers.endpoint_records import EndpointStore
from trainers.together.deploy import Deployer, DeployRequest, eval_endpoint_name
from trainers.together.hardware import NotDeployable
from trainers.together.serving import serving

KEY = "together-secret-key-0001"
PROJECT = "proj-test"
TURBO = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
REFERENCE = "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> Iterator[FakeTogether]:
    with FakeTogether(seconds_per_state=5.0, clock=clock).in_thread() as server:
        yield server


@pytest.fixture
def deployer(fake: FakeTogether, clock: ManualClock, tmp_path: Path) -> Deployer:
    return Deployer(
        base_url=fake.url,
        api_key=KEY,
        project_id=PROJECT,
        jobs_path=tmp_path / "jobs.sqlite3",
        poll_interval=1.0,
        out=io.StringIO(),
        sleep=clock.advance,
        now=clock.now,
        max_retries=0,
    )


def sdk(fake: FakeTogether) -> Together:
    return Together(api_key=KEY, base_url=fake.url, project_id=PROJECT, max_retries=0)


def test_hardware_is_listed_cheapest_first_with_prices(deployer: Deployer) -> None:
    target = deployer.hardware(TURBO)
    assert [o.hardware for o in target.options] == [
        "1xnvidia-a100-80gb",
        "1xnvidia-h100-80gb",
        "2xnvidia-h100-80gb",
    ]
    assert target.options[0].price == "$2.56/hour per replica"
    assert target.pick("1x H100 80GB").hardware == "1xnvidia-h100-80gb"
    with pytest.raises(UsageError, match="choose one of: 1xnvidia-a100-80gb"):
        target.pick("8xb200")


def test_a_reference_base_cannot_be_deployed_and_the_error_says_what_to_do(deployer: Deployer) -> None:
    with pytest.raises(NotDeployable) as caught:
        deployer.deploy(DeployRequest(REFERENCE))
    message = str(caught.value)
    assert "answers 404" in message and "Meta-Llama-3.1-8B-Instruct-Turbo" in message
    assert EndpointStore(deployer.store.path).records() == []  # nothing was created or recorded


def test_the_whole_cycle_deploy_serve_stop_delete_and_its_bill(
    deployer: Deployer, fake: FakeTogether, clock: ManualClock
) -> None:
    record = deployer.deploy(
        DeployRequest(TURBO, hardware="1xnvidia-h100-80gb", min_replicas=2, max_replicas=2)
    )
    client = sdk(fake)
    assert record.inference_name == f"{PROJECT}/{record.name}"
    (endpoint,) = client.endpoints.list()
    (deployment,) = client.endpoints.deployments.list(endpoint.id)
    assert deployment.status.state == "DEPLOYMENT_STATE_READY" and deployment.hardware == "1xnvidia-h100-80gb"
    assert endpoint.traffic_split[0].deployment_id == deployment.id
    answer = client.chat.completions.create(
        model=record.inference_name, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content.startswith("Answer to: hi")
    clock.advance(85)  # 5 s provisioning + 85 s: two started minutes, two replicas
    assert fake.endpoint_state.billed_minutes() == 4
    deployer.stop(record)
    assert client.endpoints.deployments.retrieve(deployment.id, endpoint_id=endpoint.id).status.state == (
        "DEPLOYMENT_STATE_STOPPING"
    )
    clock.advance(5)
    assert deployer.state(record) == "DEPLOYMENT_STATE_STOPPED"
    clock.advance(600)  # a stopped deployment costs nothing
    assert fake.endpoint_state.billed_minutes() == 4
    final = deployer.teardown(deployer.store.get(record.id))
    assert list(client.endpoints.list()) == [] and fake.endpoint_state.deployments == {}
    assert final.billed_minutes(clock.now()) == 4 and final.cost(clock.now()) == pytest.approx(4 * 3.36 / 60)
    assert EndpointStore(deployer.store.path).records(alive_only=True) == []


def test_a_stopped_endpoint_refuses_inference_and_an_idle_one_stops_by_itself(
    deployer: Deployer, fake: FakeTogether, clock: ManualClock
) -> None:
    import together

    record = deployer.deploy(DeployRequest(TURBO, inactive_timeout=30))
    clock.advance(30 * 60 + 1)
    assert deployer.state(record) == "DEPLOYMENT_STATE_STOPPED"
    with pytest.raises(together.InternalServerError, match="no ready deployment"):
        sdk(fake).chat.completions.create(
            model=str(record.inference_name), messages=[{"role": "user", "content": "x"}]
        )
    deployer.teardown(record)


@pytest.mark.parametrize("stop", [RuntimeError("evaluation failed"), KeyboardInterrupt()])
def test_serving_always_tears_down(deployer: Deployer, fake: FakeTogether, stop: BaseException) -> None:
    with (
        pytest.raises(type(stop)),
        serving(deployer, DeployRequest(TURBO, name=eval_endpoint_name(TURBO))) as (
            record,
            usage,
        ),
    ):
        assert deployer.state(record) == "DEPLOYMENT_STATE_READY"
        raise stop
    assert list(sdk(fake).endpoints.list()) == []
    assert usage.billed_minutes == 1 and usage.name == record.inference_name


def test_an_orphan_left_by_a_dead_process_is_deleted_by_the_next_one(
    deployer: Deployer, fake: FakeTogether
) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    left = deployer.deploy(DeployRequest(TURBO), owner="eval", owner_pid=dead_pid)
    kept = deployer.deploy(DeployRequest(TURBO))  # distill deploy's own endpoint: the user's to delete
    with serving(deployer, DeployRequest(TURBO, name="distill-next")) as (record, _):
        names = {e.name for e in sdk(fake).endpoints.list()}
        assert names == {kept.inference_name, record.inference_name}
    assert deployer.store.get(left.id).deleted_at is not None
    assert [r.name for r in deployer.cleanup(orphans_only=False)] == [kept.name]
    assert list(sdk(fake).endpoints.list()) == []


def test_a_crash_between_create_and_record_is_found_by_name(deployer: Deployer, fake: FakeTogether) -> None:
    record_id = deployer.store.add(
        base_url=deployer.base_url, project_id=PROJECT, name="distill-half", model=TURBO, hardware="1xa",
        price_cents_per_hour=100, replicas=1, owner="eval", owner_pid=None,
    )  # fmt: skip
    sdk(fake).endpoints.create(name="distill-half")  # created, but the process died before recording its id
    deployer.cleanup(orphans_only=False)
    assert list(sdk(fake).endpoints.list()) == []
    assert deployer.store.get(record_id).deleted_at is not None


def test_replica_and_timeout_flags_are_checked_before_anything_is_created(deployer: Deployer) -> None:
    for request, flag in (
        (DeployRequest(TURBO, min_replicas=0), "--min-replicas"),
        (DeployRequest(TURBO, min_replicas=2, max_replicas=1), "--max-replicas"),
        (DeployRequest(TURBO, inactive_timeout=5), "--inactive-timeout"),
    ):
        with pytest.raises(UsageError, match=flag):
            deployer.deploy(request)


def test_no_project_is_a_usage_error_naming_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TOGETHER_PROJECT_ID", raising=False)
    with pytest.raises(UsageError, match="TOGETHER_PROJECT_ID"):
        _ = Deployer(base_url="http://127.0.0.1:9", api_key=KEY, jobs_path=tmp_path / "j.sqlite3").client
