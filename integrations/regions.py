"""Firehose region codes, as botocore knows them."""

from typing import NamedTuple

import boto3

FIREHOSE_REGIONS: tuple[str, ...] = tuple(
    sorted(
        region
        for partition in ("aws", "aws-us-gov", "aws-cn")
        for region in boto3.session.Session().get_available_regions("firehose", partition_name=partition)
    )
)
REGION_CHOICES = [(region, region) for region in FIREHOSE_REGIONS]
# The ARN partition of each region: arn:aws-cn:... in China, arn:aws-us-gov:... in GovCloud.
REGION_PARTITIONS: dict[str, str] = {
    region: boto3.session.Session().get_partition_for_region(region) for region in FIREHOSE_REGIONS
}


def region_partition(region: str) -> str:
    return REGION_PARTITIONS.get(region, "aws")


class Quota(NamedTuple):
    """A stream's Direct PUT quota (PutRecord and PutRecordBatch together)."""

    records_per_second: int
    bytes_per_second: int
    requests_per_second: int


LARGE_REGIONS = frozenset({"us-east-1", "us-west-2", "eu-west-1"})
LARGE_REGION_QUOTA = Quota(500_000, 5 * 1024 * 1024, 2_000)
OTHER_REGION_QUOTA = Quota(100_000, 1024 * 1024, 1_000)


def region_quota(region: str) -> Quota:
    return LARGE_REGION_QUOTA if region in LARGE_REGIONS else OTHER_REGION_QUOTA
