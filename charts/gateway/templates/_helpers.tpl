{{- define "gateway.name" -}}{{ .Release.Name }}-execai-gateway{{- end -}}
{{- define "gateway.labels" -}}
app.kubernetes.io/name: execai-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "gateway.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}
{{/* The container's security settings: nothing writable but the mounted volumes, no privilege. */}}
{{- define "gateway.containerSecurity" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "gateway.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "gateway.egressList" -}}
{{- $items := list -}}
{{- range .Values.networkPolicy.egress -}}
{{- $items = append $items (printf "%s %s:%v/%s" .name (default "*" .host) .port .protocol) -}}
{{- end -}}
{{- join ", " $items -}}
{{- end -}}
