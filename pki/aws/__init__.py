"""The AWS trust side: trust-store bundles for API Gateway and ALB (``bundles``), their
publication to S3 and the endpoints with a ledger (``publish``), the Lambda authorizer that
applies revocations API Gateway never checks (``authorizer``), and the one place boto3
clients are made (``client``). The Private CA backend is ``pki.backends.aws_pca``."""
