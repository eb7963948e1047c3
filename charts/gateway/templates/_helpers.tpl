{{- define "gateway.name" -}}{{ .Release.Name }}-execai-gateway{{- end -}}
{{- define "gateway.labels" -}}
app.kubernetes.io/name: execai-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
