from django.apps import AppConfig
from django.db.models.signals import post_migrate


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = "Amazon Kinesis Data Firehose"

    def ready(self) -> None:
        from project import db  # noqa: F401 - registers the `any` lookup and the connection settings

        post_migrate.connect(delivery_shards_apply, sender=self)


def delivery_shards_apply(sender: AppConfig, **kwargs) -> None:
    """`manage.py migrate` applies a changed DELIVERY_SHARDS: the backlogs move to the new shard count."""
    from django.conf import settings

    from .layout import ReshardTimeout, delivery_layout, delivery_shards_change

    if delivery_layout().shards == settings.DELIVERY_SHARDS:
        return
    try:
        moved = delivery_shards_change(count=settings.DELIVERY_SHARDS)
    except ReshardTimeout as error:
        print(f"  DELIVERY_SHARDS not applied: {error} Run manage.py reshard_deliveries once the drains are idle.")
        return
    print(f"  Deliveries split into {settings.DELIVERY_SHARDS} shards ({moved} pending or failed deliveries moved).")
