{{/* Names and labels shared by every template. */}}

{{- define "mcp-authz.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mcp-authz.operatorName" -}}
{{- printf "%s-operator" (include "mcp-authz.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-authz.webhookName" -}}
{{- printf "%s-webhook" (include "mcp-authz.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-authz.labels" -}}
app.kubernetes.io/name: mcp-authz
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mcp-authz.operatorSelector" -}}
app.kubernetes.io/name: mcp-authz
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "mcp-authz.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $name (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* The hardened container securityContext every container of the plane runs with. */}}
{{- define "mcp-authz.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mcp-authz.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
OTEL_RESOURCE_ATTRIBUTES from a map: `key=value,...` with each value percent-encoded, as the OpenTelemetry
specification reads the list (W3C Baggage octets): unencoded, a `,` in a value starts another attribute and a `%`
or a space breaks it. urlquery leaves only A-Z a-z 0-9 - _ . ~ as they are and writes a space as `+`, which a
percent-decoder keeps as `+`: it becomes %20 (a `+` of the value was already %2B). Keys are not decoded by
readers; the schema admits only keys that need no encoding.
*/}}
{{- define "mcp-authz.resourceAttributes" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key (urlquery $value | replace "+" "%20")) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Labels as key=value,... (sorted by key), for the operator's label-list flags. */}}
{{- define "mcp-authz.labelList" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
