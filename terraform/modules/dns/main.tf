# DNS for one environment: the hosted zone, the ACM certificate of the service (validated by DNS
# records in that zone), and an alias record that reaches the AWS side directly so it can be
# checked before the cutover. The service's own record (`shop.<domain>`) is deliberately not
# managed here: the cutover runbook moves it (route53.cutover), and Terraform would report that
# move as drift.

terraform {
  required_version = ">= 1.10"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

resource "aws_route53_zone" "this" {
  name    = var.domain
  comment = "Managed by Terraform (terraform/modules/dns)"
  tags    = var.tags
}

resource "aws_acm_certificate" "service" {
  domain_name               = "${var.service}.${var.domain}"
  subject_alternative_names = ["${var.direct_record}.${var.domain}"]
  validation_method         = "DNS"
  tags                      = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_route53_record" "validation" {
  for_each = {
    for o in aws_acm_certificate.service.domain_validation_options : o.domain_name => {
      name   = o.resource_record_name
      type   = o.resource_record_type
      record = o.resource_record_value
    }
  }
  zone_id         = aws_route53_zone.this.zone_id
  name            = each.value.name
  type            = each.value.type
  ttl             = 300
  records         = [each.value.record]
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "service" {
  certificate_arn         = aws_acm_certificate.service.arn
  validation_record_fqdns = [for r in aws_route53_record.validation : r.fqdn]
}

resource "aws_route53_record" "direct" {
  zone_id = aws_route53_zone.this.zone_id
  name    = "${var.direct_record}.${var.domain}"
  type    = "A"

  alias {
    name                   = var.alb_dns_name
    zone_id                = var.alb_zone_id
    evaluate_target_health = true
  }
}
