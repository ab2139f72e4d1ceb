"""awsgate: a bundle of mitmproxy addons that puts agents on a leash when they call AWS."""
