{{- define "rtml.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rtml.serviceAccountName" -}}
{{- default (include "rtml.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "rtml.labels" -}}
app.kubernetes.io/name: rtml-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: rtml
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "rtml.selectorLabels" -}}
app.kubernetes.io/name: rtml-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The images a Model may name (docs/tenancy.md): the chart's runtime repository with any tag
or digest, and runtime.allowedImages. A JSON list for RTML_ALLOWED_RUNTIME_IMAGES. */ -}}
{{- define "rtml.allowedRuntimeImages" -}}
{{- $repo := .Values.runtime.image.repository -}}
{{- $own := list $repo (printf "%s:*" $repo) (printf "%s@*" $repo) -}}
{{- toJson (concat $own (.Values.runtime.allowedImages | default list)) -}}
{{- end -}}
