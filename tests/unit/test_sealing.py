"""A caller's token sealed into a lease record: readable only with the shared key, for no longer
than the prediction it served can live, and never the plain token in Redis."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from service.__main__ import describe_settings_error
from service.config import Settings
from service.coordination import Holder, Lease, Orphan
from service.orphans import OrphanKeeper
from service.sealing import TokenSealer, new_key

TOKEN = "r8_caller_token_sealing_tests_0001"


def test_a_sealed_token_opens_with_the_same_key_only() -> None:
    key = new_key()
    sealed = TokenSealer(key, max_age_s=60).seal(TOKEN)
    assert sealed is not None and TOKEN not in sealed
    assert TokenSealer(key, max_age_s=60).open(sealed) == TOKEN
    assert TokenSealer(new_key(), max_age_s=60).open(sealed) is None
    assert TokenSealer(key, max_age_s=60).open(sealed[:-4] + "AAAA") is None
    assert TokenSealer(None, max_age_s=60).open(sealed) is None


def test_a_sealed_token_expires_with_the_prediction_it_served() -> None:
    key = new_key()
    old = Fernet(key.encode()).encrypt_at_time(TOKEN.encode(), current_time=0).decode()
    assert TokenSealer(key, max_age_s=930).open(old) is None


def test_without_a_key_nothing_is_sealed() -> None:
    sealer = TokenSealer(None, max_age_s=60)
    assert not sealer.enabled and sealer.seal(TOKEN) is None


def test_the_setting_refuses_a_malformed_key_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(token_sealing_key="not-a-fernet-key-but-a-secret")
    told = describe_settings_error(caught.value)  # what `python -m service` prints
    assert "TOKEN_SEALING_KEY" in told and "python -m service.sealing" in told
    assert "not-a-fernet-key-but-a-secret" not in told
    assert Settings(token_sealing_key=new_key()).token_sealing_key is not None


class _Owner:
    async def release(self, lease: Lease) -> bool:
        return True

    async def annotate(self, lease: Lease) -> bool:
        return True

    def forget(self, lease: Lease) -> None:
        pass


def _orphan(record: dict[str, object]) -> Orphan:
    lease = Lease(
        owner=_Owner(),
        semaphore_id="s",
        kind="sem",
        lease_id="l",
        expires_at_ms=0,
        epoch="e",
        limit=1,
        ttl_s=3,
        holder=Holder(replica="r"),
        keys_ttl_ms=0,
    )
    return Orphan(lease=lease, previous_lease_id="o", record=record, pin_in_s=10, orphaned_for_s=0)


def test_an_adopter_asks_replicate_with_the_right_token() -> None:
    from service.fingerprint import token_fingerprint

    key = new_key()
    sealer = TokenSealer(key, max_age_s=60)
    keeper = OrphanKeeper(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        server_token="r8_server_token_sealing_tests",
        sealer=sealer,
    )
    server = _orphan({"account": token_fingerprint("r8_server_token_sealing_tests")})
    assert keeper._token_for(server) == "r8_server_token_sealing_tests"
    caller = _orphan({"account": token_fingerprint(TOKEN), "sealed_token": sealer.seal(TOKEN)})
    assert keeper._token_for(caller) == TOKEN
    unsealed = _orphan({"account": token_fingerprint(TOKEN), "sealed_token": None})
    assert keeper._token_for(unsealed) is None  # held until its pin instead


class _NoUpstream:
    """Fails the test if the adopter asks Replicate anything."""

    async def settle(self, *args: object, **kwargs: object) -> str | None:
        raise AssertionError("settle must not be called")

    async def find_predictions(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("find_predictions must not be called")


async def test_an_orphan_whose_create_answer_never_came_is_held_until_its_pin() -> None:
    """Its create may still land at Replicate later than any lookup could see (a delayed
    request): no lookup may release it early."""
    from service.fingerprint import token_fingerprint

    keeper = OrphanKeeper(
        None,  # type: ignore[arg-type]
        _NoUpstream(),  # type: ignore[arg-type]
        server_token="r8_server_token_sealing_tests",
        sealer=TokenSealer(None, max_age_s=60),
    )
    orphan = _orphan(
        {
            "account": token_fingerprint("r8_server_token_sealing_tests"),
            "prediction_id": None,
            "model": "black-forest-labs/flux-dev",
            "input": {"prompt": "x"},
            "acquired_at": 0.0,
            "create_unknown": True,
        }
    )
    orphan = Orphan(
        lease=orphan.lease,
        previous_lease_id="o",
        record=orphan.record,
        pin_in_s=0.05,
        orphaned_for_s=0,
    )
    assert await keeper._outcome(orphan) == "waited_out"
