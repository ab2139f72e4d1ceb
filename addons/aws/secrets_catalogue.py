"""The built-in catalogue of secret-bearing AWS fields, as data.

Each entry maps an action (``service:Operation``, botocore names) to JSONPath
expressions over the member names of the operation's output shape (responses)
or input shape (requests, for the record only). Members botocore's models mark
``sensitive`` are masked besides (``redact.builtin_rules``); this catalogue
names what those marks miss and the agent-facing secrets. They are always on: a policy
can lower a response entry to record-only for some principals with a
``scope: record`` mask naming the same field, but nothing makes a secret
appear in the record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SecretField:
    """A JSONPath whose values are secret, unless a sibling member says otherwise.

    ``unless`` names a sibling member of the matched value and the values that
    make it harmless: an SSM parameter is only secret when its ``Type`` is not
    ``String`` or ``StringList`` (a missing ``Type`` counts as secret).
    """

    path: str
    unless: tuple[str, tuple[str, ...]] | None = None


PLAIN_PARAMETER = ("Type", ("String", "StringList"))

_STS_CREDENTIALS = (
    SecretField("$.Credentials.SecretAccessKey"),
    SecretField("$.Credentials.SessionToken"),
)
# Credentials at the top of the output, where botocore's model marks nothing sensitive.
_TOP_LEVEL_CREDENTIALS = (SecretField("$.SecretAccessKey"), SecretField("$.SessionToken"))
_SECRET_VALUE = (SecretField("$.SecretString"), SecretField("$.SecretBinary"))
_LAMBDA_CONFIGURATION = (SecretField("$.Environment.Variables.*"),)

RESPONSE_SECRETS: dict[str, tuple[SecretField, ...]] = {
    "secretsmanager:GetSecretValue": _SECRET_VALUE,
    "secretsmanager:BatchGetSecretValue": (
        SecretField("$.SecretValues[*].SecretString"),
        SecretField("$.SecretValues[*].SecretBinary"),
    ),
    "secretsmanager:GetRandomPassword": (SecretField("$.RandomPassword"),),
    "ssm:GetParameter": (SecretField("$.Parameter.Value", PLAIN_PARAMETER),),
    "ssm:GetParameters": (SecretField("$.Parameters[*].Value", PLAIN_PARAMETER),),
    "ssm:GetParametersByPath": (SecretField("$.Parameters[*].Value", PLAIN_PARAMETER),),
    "ssm:GetParameterHistory": (SecretField("$.Parameters[*].Value", PLAIN_PARAMETER),),
    "kms:Decrypt": (SecretField("$.Plaintext"),),
    "kms:GenerateDataKey": (SecretField("$.Plaintext"),),
    "kms:GenerateDataKeyPair": (SecretField("$.PrivateKeyPlaintext"),),
    "kms:DeriveSharedSecret": (SecretField("$.SharedSecret"),),
    "sts:AssumeRole": _STS_CREDENTIALS,
    "sts:AssumeRoleWithSAML": _STS_CREDENTIALS,
    "sts:AssumeRoleWithWebIdentity": _STS_CREDENTIALS,
    "sts:AssumeRoot": _STS_CREDENTIALS,
    "sts:GetSessionToken": _STS_CREDENTIALS,
    "sts:GetFederationToken": _STS_CREDENTIALS,
    "iam:CreateAccessKey": (SecretField("$.AccessKey.SecretAccessKey"),),
    "iam:CreateServiceSpecificCredential": (
        SecretField("$.ServiceSpecificCredential.ServicePassword"),
    ),
    "iam:ResetServiceSpecificCredential": (
        SecretField("$.ServiceSpecificCredential.ServicePassword"),
    ),
    "sso:GetRoleCredentials": (
        SecretField("$.roleCredentials.secretAccessKey"),
        SecretField("$.roleCredentials.sessionToken"),
    ),
    "cognito-identity:GetCredentialsForIdentity": (
        SecretField("$.Credentials.SecretKey"),
        SecretField("$.Credentials.SessionToken"),
    ),
    "s3:CreateSession": (
        SecretField("$.Credentials.SecretAccessKey"),
        SecretField("$.Credentials.SessionToken"),
    ),
    "lightsail:CreateBucketAccessKey": (SecretField("$.accessKey.secretAccessKey"),),
    "lakeformation:AssumeDecoratedRoleWithSAML": _TOP_LEVEL_CREDENTIALS,
    "lakeformation:GetTemporaryGlueFunctionCredentials": _TOP_LEVEL_CREDENTIALS,
    "lakeformation:GetTemporaryGluePartitionCredentials": _TOP_LEVEL_CREDENTIALS,
    "lakeformation:GetTemporaryGlueTableCredentials": _TOP_LEVEL_CREDENTIALS,
    "lakeformation:GetTemporaryDataLocationCredentials": _STS_CREDENTIALS,
    "redshift:GetClusterCredentials": (SecretField("$.DbPassword"),),
    "ecr:GetAuthorizationToken": (SecretField("$.authorizationData[*].authorizationToken"),),
    "ecr-public:GetAuthorizationToken": (SecretField("$.authorizationData.authorizationToken"),),
    "ec2:GetPasswordData": (SecretField("$.PasswordData"),),
    "lambda:GetFunction": (SecretField("$.Configuration.Environment.Variables.*"),),
    "lambda:GetFunctionConfiguration": _LAMBDA_CONFIGURATION,
    "lambda:CreateFunction": _LAMBDA_CONFIGURATION,
    "lambda:UpdateFunctionConfiguration": _LAMBDA_CONFIGURATION,
    "lambda:UpdateFunctionCode": _LAMBDA_CONFIGURATION,
    "lambda:PublishVersion": _LAMBDA_CONFIGURATION,
    "lambda:ListFunctions": (SecretField("$.Functions[*].Environment.Variables.*"),),
    "lambda:ListVersionsByFunction": (SecretField("$.Versions[*].Environment.Variables.*"),),
}

# Secrets the agent sends: kept out of the record (they still reach AWS).
REQUEST_SECRETS: dict[str, tuple[SecretField, ...]] = {
    "secretsmanager:CreateSecret": _SECRET_VALUE,
    "secretsmanager:PutSecretValue": _SECRET_VALUE,
    "secretsmanager:UpdateSecret": _SECRET_VALUE,
    "ssm:PutParameter": (SecretField("$.Value", PLAIN_PARAMETER),),
    "kms:Encrypt": (SecretField("$.Plaintext"),),
    "lambda:CreateFunction": _LAMBDA_CONFIGURATION,
    "lambda:UpdateFunctionConfiguration": _LAMBDA_CONFIGURATION,
    "iam:CreateLoginProfile": (SecretField("$.Password"),),
    "iam:UpdateLoginProfile": (SecretField("$.Password"),),
    "iam:ChangePassword": (SecretField("$.OldPassword"), SecretField("$.NewPassword")),
    "sts:AssumeRoleWithWebIdentity": (SecretField("$.WebIdentityToken"),),
    "sts:AssumeRoleWithSAML": (SecretField("$.SAMLAssertion"),),
}
