from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from integrations.layout import ReshardTimeout, delivery_shard_count, delivery_shards_change


class Command(BaseCommand):
    help = (
        "Split every connection's backlog into a new number of shards (default: DELIVERY_SHARDS), moving the pending "
        "and failed deliveries; waits for the running drains to give their leases back first."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("shards", nargs="?", type=int, help="the new shard count, 1 to 256")
        parser.add_argument("--wait", type=float, default=None, help="seconds to wait for running drains")

    def handle(self, *args, shards: int | None, wait: float | None, **options) -> None:
        count = shards or settings.DELIVERY_SHARDS
        before = delivery_shard_count()
        try:
            moved = delivery_shards_change(count=count, wait_seconds=wait)
        except (ValueError, ReshardTimeout) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Shards: {before} -> {count}; {moved} pending or failed deliveries moved.")
