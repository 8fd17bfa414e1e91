"""Firehose region codes, as botocore knows them."""

import boto3

FIREHOSE_REGIONS: tuple[str, ...] = tuple(
    sorted(
        region
        for partition in ("aws", "aws-us-gov", "aws-cn")
        for region in boto3.session.Session().get_available_regions("firehose", partition_name=partition)
    )
)
REGION_CHOICES = [(region, region) for region in FIREHOSE_REGIONS]
