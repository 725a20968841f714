job "thawd" {
  type = "system"                    # one allocation on every eligible client
  group "thawd" {
    network {
      port "api" { static = 7420 }   # thawd's TCP listener (TLS + tokens)
    }
    service {
      name     = "thawd"
      port     = "api"
      provider = "nomad"
      check {                        # GET /healthz needs no token
        type            = "http"
        protocol        = "https"
        path            = "/healthz"
        tls_skip_verify = true       # or give Nomad the CA that signed thawd's certificate
        interval        = "10s"
        timeout         = "2s"
      }
    }
    task "thawd" {
      driver = "raw_exec"            # thawd starts QEMU processes of its own
      config {
        command = "/usr/local/bin/thawd"
        args = [
          "--max-vms", "64",
          "--listen", "0.0.0.0:${NOMAD_PORT_api}",
          "--tls-cert", "${NOMAD_SECRETS_DIR}/cert.pem",
          "--tls-key", "${NOMAD_SECRETS_DIR}/key.pem",
          "--tokens", "${NOMAD_SECRETS_DIR}/tokens",
        ]
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
      template {                     # the certificate of this host, signed by your CA
        destination = "secrets/cert.pem"
        data        = "{{ with nomadVar \"nomad/jobs/thawd\" }}{{ .cert }}{{ end }}"
      }
      template {
        destination = "secrets/key.pem"
        perms       = "600"
        data        = "{{ with nomadVar \"nomad/jobs/thawd\" }}{{ .key }}{{ end }}"
      }
      template {                     # NAME:SHA256HEX lines (thaw token new NAME --tokens FILE)
        destination = "secrets/tokens"
        perms       = "600"
        change_mode = "noop"         # thawd reads the file again when it changes
        data        = "{{ with nomadVar \"nomad/jobs/thawd\" }}{{ .tokens }}{{ end }}"
      }
      resources {
        cpu    = 500
        memory = 256                 # the daemon itself; VMs are accounted by the host
      }
    }
  }
}
