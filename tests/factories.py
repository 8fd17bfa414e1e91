"""Builders of the tests' objects, all made through the project's services as the API and the admin make them:
factory_boy factories for configurations, audiences and connections (each one's `_create` calls the service), and
the membership changes that fill an audience (`join`, `leave`, `apply`, `members`).

A test that exercises a service calls that service itself; these builders only set the scene.
"""

from __future__ import annotations

import factory

from audiences.models import Audience
from audiences.services import ChangeIn, audience_create, membership_changes_apply
from integrations.configurations import configuration_create
from integrations.connections import connection_create
from integrations.models import Configuration, Connection
from integrations.outbox import OUTBOX

ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class ConfigurationFactory(factory.Factory):
    """A configuration made by `configuration_create`: the secret is validated and stored encrypted."""

    class Meta:
        model = Configuration

    name = "Travel"
    access_key_id = ACCESS_KEY_ID
    secret_access_key = SECRET_ACCESS_KEY

    @classmethod
    def _create(cls, model_class: type[Configuration], **fields) -> Configuration:
        return configuration_create(**fields)


class AudienceFactory(factory.Factory):
    """An audience made by `audience_create`."""

    class Meta:
        model = Audience

    internal_name = "low_engagement"
    external_name = "LowEngagement"

    @classmethod
    def _create(cls, model_class: type[Audience], **fields) -> Audience:
        return audience_create(**fields)


class ConnectionFactory(factory.Factory):
    """A connection made by `connection_create`: an active one starts its initial sync at once."""

    class Meta:
        model = Connection

    audience = factory.SubFactory(AudienceFactory)
    configuration = factory.SubFactory(ConfigurationFactory)
    stream_name = "audience-stream"

    @classmethod
    def _create(cls, model_class: type[Connection], **fields) -> Connection:
        return connection_create(**fields)


def apply(audience: Audience, *changes: ChangeIn):
    return membership_changes_apply(audience=audience, changes=list(changes), outbox=OUTBOX)


def join(user_id: str, timestamp: int | None = None, **identities: str) -> ChangeIn:
    return ChangeIn(user_id=user_id, is_member=True, identities=identities or None, timestamp=timestamp)


def leave(user_id: str, timestamp: int | None = None, **identities: str) -> ChangeIn:
    return ChangeIn(user_id=user_id, is_member=False, identities=identities or None, timestamp=timestamp)


def members(audience: Audience, count: int, prefix: str = "user", **identities: str) -> None:
    """`count` users join, each with its user id as CustomerId (plus `identities`)."""
    changes = [
        ChangeIn(user_id=f"{prefix}-{n}", is_member=True, identities={"CustomerId": f"{prefix}-{n}", **identities})
        for n in range(count)
    ]
    membership_changes_apply(audience=audience, changes=changes, outbox=OUTBOX)
