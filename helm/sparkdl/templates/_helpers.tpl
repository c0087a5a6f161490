{{- define "sparkdl.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sparkdl.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sparkdl.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sparkdl.masterUrl" -}}
spark://{{ include "sparkdl.fullname" . }}-master:{{ .Values.master.port }}
{{- end -}}

{{/* env, volumes and mounts every Spark pod shares: writable scratch dirs on a read-only root, Hadoop conf */}}
{{- define "sparkdl.commonEnv" -}}
- name: HADOOP_CONF_DIR
  value: /etc/hadoop/conf
- name: SPARK_LOCAL_DIRS
  value: /tmp/spark
- name: HOME
  value: /home/spark
- name: SPARK_LOCAL_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{- define "sparkdl.commonMounts" -}}
- name: tmp
  mountPath: /tmp
- name: hadoop-conf
  mountPath: /etc/hadoop/conf
  readOnly: true
{{- end -}}

{{- define "sparkdl.commonVolumes" -}}
- name: tmp
  emptyDir: {}
- name: hadoop-conf
  configMap:
    name: {{ include "sparkdl.fullname" . }}-hadoop
{{- end -}}
