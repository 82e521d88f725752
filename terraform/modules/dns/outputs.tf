output "zone_id" {
  value       = aws_route53_zone.this.zone_id
  description = "Hosted zone id."
}

output "name_servers" {
  value       = aws_route53_zone.this.name_servers
  description = "Name servers to delegate the domain to."
}

output "certificate_arn" {
  value       = aws_acm_certificate_validation.service.certificate_arn
  description = "ARN of the validated certificate (for the HTTPS listener)."
}

output "direct_fqdn" {
  value       = aws_route53_record.direct.fqdn
  description = "Name that reaches the AWS side directly, before the cutover."
}
