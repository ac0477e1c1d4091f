# Terraform and provider versions. The AWS provider is held to 5.x: the S3
# sub-resources used here (aws_s3_bucket_versioning, _lifecycle_configuration,
# _server_side_encryption_configuration, ...) are the 4.x+/5.x split-resource API.
terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

# Credentials come from the default AWS chain (env, profile, SSO); nothing is
# configured here so no secret ever lands in this repository.
provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project    = "imgrec"
      managed-by = "terraform"
    }
  }
}
