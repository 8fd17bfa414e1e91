"""Firehose region codes and their Direct PUT quotas (three regions have the higher quota)."""

import boto3

FIREHOSE_REGIONS: tuple[str, ...] = tuple(
    sorted(
        region
        for partition in ("aws", "aws-us-gov", "aws-cn")
        for region in boto3.session.Session().get_available_regions("firehose", partition_name=partition)
    )
)
QUOTA_REGIONS = frozenset({"us-east-1", "us-west-2", "eu-west-1"})
REGION_CHOICES = [(region, region) for region in FIREHOSE_REGIONS]
