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

{{- define "sparkdl.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "sparkdl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "sparkdl.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* the service account of Spark drivers on Kubernetes (the operator's, or spark-submit --master k8s://) */}}
{{- define "sparkdl.driverServiceAccountName" -}}
{{ .Values.driverServiceAccount.name | default (printf "%s-spark-driver" (include "sparkdl.fullname" .) | trunc 63 | trimSuffix "-") }}
{{- end -}}

{{/* whether the chart makes that account: asked for, or the operator is on and no existing account is named */}}
{{- define "sparkdl.makeDriverServiceAccount" -}}
{{- $sa := .Values.driverServiceAccount -}}
{{- if or $sa.create (and .Values.sparkOperator.enabled (not $sa.name)) }}true{{ end -}}
{{- end -}}

{{/* nodeSelector / tolerations / affinity of a pod: the component's own where it sets one, else the global one.
     Call with (dict "root" $ "c" .Values.<component>). */}}
{{- define "sparkdl.scheduling" -}}
{{- with (.c.nodeSelector | default .root.Values.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.c.tolerations | default .root.Values.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.c.affinity | default .root.Values.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* the pod-level settings every pod of the chart shares (not the operator's: those are SparkApplication fields).
     Call with (dict "root" $ "c" .Values.<component>). */}}
{{- define "sparkdl.podCommon" -}}
serviceAccountName: {{ include "sparkdl.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- include "sparkdl.scheduling" . }}
{{- end -}}

{{/* Spark RPC authentication of the standalone master and workers: spark.authenticate=true as a daemon option,
     the shared secret from an existing Secret in _SPARK_AUTH_SECRET (no secret on a command line). Spark's
     SecurityManager.getSecretKey reads that variable before the spark.authenticate.secret conf; the workers pass
     it on to the executors they launch the same way. Secret files (spark.authenticate.secret.file) are refused
     outside Kubernetes mode. */}}
{{- define "sparkdl.daemonAuthEnv" -}}
{{- if .Values.sparkAuth.enabled }}
- name: _SPARK_AUTH_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.sparkAuth.secretName }}
      key: {{ .Values.sparkAuth.secretKey }}
{{- end }}
{{- end -}}

{{/* SPARK_DAEMON_JAVA_OPTS of the master and workers: authentication, and the PrometheusServlet when scraped */}}
{{- define "sparkdl.daemonOpts" -}}
{{- $opts := list -}}
{{- if .Values.sparkAuth.enabled -}}
{{- $opts = append $opts "-Dspark.authenticate=true" -}}
{{- end -}}
{{- if .Values.metrics.serviceMonitor.enabled -}}
{{- $opts = append $opts "-Dspark.metrics.conf.*.sink.prometheusServlet.class=org.apache.spark.metrics.sink.PrometheusServlet" -}}
{{- $opts = append $opts "-Dspark.metrics.conf.*.sink.prometheusServlet.path=/metrics/prometheus" -}}
{{- $opts = append $opts "-Dspark.metrics.conf.master.sink.prometheusServlet.path=/metrics/master/prometheus" -}}
{{- end -}}
{{- with $opts }}
- name: SPARK_DAEMON_JAVA_OPTS
  value: {{ join " " . | quote }}
{{- end }}
{{- end -}}

{{- define "sparkdl.requireStandalone" -}}
{{- if not .root.Values.standalone.enabled }}
{{- fail (printf "%s.enabled runs spark-submit against the chart's standalone cluster: it needs standalone.enabled (or use sparkOperator.%s)" .stage .stage) }}
{{- end }}
{{- end -}}

{{/* A Job running `spark-submit <jobsDir>/<stage>.py ARGS` in client mode against the standalone master.
     Call with (dict "root" $ "stage" "train" "job" .Values.train "args" (list ...)). */}}
{{- define "sparkdl.submitJob" -}}
{{- $root := .root -}}
{{- include "sparkdl.requireStandalone" . }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "sparkdl.fullname" $root }}-{{ .stage }}
  labels:
    {{- include "sparkdl.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .stage }}
spec:
  backoffLimit: {{ .job.backoffLimit }}
  template:
    metadata:
      labels:
        {{- include "sparkdl.selector" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .stage }}
    spec:
      restartPolicy: Never
      {{- include "sparkdl.podCommon" (dict "root" $root "c" .job) | nindent 6 }}
      containers:
        - name: {{ .stage }}
          image: {{ include "sparkdl.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["spark-submit"]
          args:
            - --master
            - {{ include "sparkdl.masterUrl" $root | quote }}
            - --conf
            - spark.driver.host=$(SPARK_LOCAL_IP)
            {{- if $root.Values.sparkAuth.enabled }}
            # the driver of a standalone application must have the secret in its conf (SecurityManager.initializeAuth)
            - --conf
            - spark.authenticate=true
            - --conf
            - spark.authenticate.secret=$(SPARK_AUTH_SECRET)
            {{- end }}
            {{- range $k, $v := .job.sparkConf }}
            - --conf
            - {{ printf "%s=%v" $k $v | quote }}
            {{- end }}
            - {{ printf "%s/%s.py" $root.Values.image.jobsDir .stage | quote }}
            {{- range .args }}
            - {{ . | quote }}
            {{- end }}
            {{- range .job.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            {{- include "sparkdl.commonEnv" $root | nindent 12 }}
            {{- if $root.Values.sparkAuth.enabled }}
            - name: SPARK_AUTH_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.sparkAuth.secretName }}
                  key: {{ $root.Values.sparkAuth.secretKey }}
            {{- end }}
          {{- with .job.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "sparkdl.commonMounts" $root | nindent 12 }}
            {{- if .job.modelVolume }}
            - name: models
              mountPath: /models
            {{- end }}
      volumes:
        {{- include "sparkdl.commonVolumes" $root | nindent 8 }}
        {{- if .job.modelVolume }}
        - name: models
          {{- if .job.modelVolume.claimName }}
          persistentVolumeClaim:
            claimName: {{ .job.modelVolume.claimName }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- end }}
{{- end -}}

{{- define "sparkdl.requireAuthSecret" -}}
{{- if and .Values.sparkAuth.enabled (not .Values.sparkAuth.secretName) }}
{{- fail "sparkAuth.enabled needs sparkAuth.secretName: an existing Secret with the shared secret of the standalone cluster under sparkAuth.secretKey (kubectl create secret generic NAME --from-literal=secret=\"$(openssl rand -hex 32)\")" }}
{{- end }}
{{- end -}}

{{/* The options of `sparkdl <stage>` from a stage's values, the same for its Job and its SparkApplication, as a JSON
     list (use with fromJsonArray); fails naming what is missing. Call with
     (dict "stage" "train" "v" .Values.train "at" "train"), "at" being where the values live (e.g. sparkOperator.train). */}}
{{- define "sparkdl.stageArgs" -}}
{{- $v := .v -}}
{{- $at := .at -}}
{{- $args := list -}}
{{- if eq .stage "ingest" -}}
{{- if not (and $v.images $v.output) }}
{{- fail (printf "%s.enabled needs %s.images (the image-folder tree URI) and %s.output (the images table URI)" $at $at $at) }}
{{- end }}
{{- $args = list "--images" $v.images "--output" $v.output -}}
{{- else if eq .stage "featurize" -}}
{{- if not (and $v.input $v.output) }}
{{- fail (printf "%s.enabled needs %s.input (the images table URI) and %s.output (the features table URI)" $at $at $at) }}
{{- end }}
{{- $args = list "--input" $v.input "--output" $v.output "--backbone" $v.backbone -}}
{{- if $v.weights }}
{{- $args = concat $args (list "--weights" $v.weights) -}}
{{- end }}
{{- else if eq .stage "train" -}}
{{- if not (and $v.features $v.output) }}
{{- fail (printf "%s.enabled needs %s.features (the features table URI) and %s.output (where the model bundle goes)" $at $at $at) }}
{{- end }}
{{- $args = list "--features" $v.features "--output" $v.output "--training-master" $v.trainingMaster "--workers" (toString $v.workers) "--epochs" (toString $v.epochs) -}}
{{- else if eq .stage "predict" -}}
{{- if not (and $v.model $v.output) }}
{{- fail (printf "%s.enabled needs %s.model (the model bundle URI) and %s.output (the predictions table URI)" $at $at $at) }}
{{- end }}
{{- if eq (empty $v.images) (empty $v.table) }}
{{- fail (printf "%s.enabled needs exactly one of %s.images (a folder of images) and .table (an images table)" $at $at) }}
{{- end }}
{{- $args = list "--model" $v.model -}}
{{- if $v.images }}
{{- $args = concat $args (list "--images" $v.images) -}}
{{- else }}
{{- $args = concat $args (list "--table" $v.table) -}}
{{- end }}
{{- $args = concat $args (list "--output" $v.output) -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}
