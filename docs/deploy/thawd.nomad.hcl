job "thawd" {
  type = "system"                    # one allocation on every eligible client
  group "thawd" {
    task "thawd" {
      driver = "raw_exec"            # thawd starts QEMU processes of its own
      config {
        command = "/usr/local/bin/thawd"
        args    = ["--max-vms", "64"]
      }
      env {
        THAW_HOME        = "/var/lib/thaw"
        THAW_S3_ENDPOINT = "http://s3.internal:3900"
        AWS_REGION       = "garage"
      }
      template {                     # keys from Vault / Nomad variables
        destination = "secrets/s3.env"
        env         = true
        data        = <<EOT
AWS_ACCESS_KEY_ID={{ with nomadVar "nomad/jobs/thawd" }}{{ .key_id }}{{ end }}
AWS_SECRET_ACCESS_KEY={{ with nomadVar "nomad/jobs/thawd" }}{{ .secret }}{{ end }}
EOT
      }
      resources {
        cpu    = 500
        memory = 256                 # the daemon itself; VMs are accounted by the host
      }
    }
  }
}
