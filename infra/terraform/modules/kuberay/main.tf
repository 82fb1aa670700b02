# The KubeRay operator: it turns the RayCluster, RayJob and RayService objects of k8s/ into pods.
resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.chart_version
  namespace        = var.namespace
  create_namespace = true
  atomic           = true # a failed upgrade rolls back instead of leaving a half-installed operator
  wait             = true

  values = [yamlencode({
    # Features the manifests use: RayJob deletionRules (k8s/base/rayjob-defaults.yaml) and the
    # judge's NewClusterWithIncrementalUpgrade (k8s/base/rayservice-judge.yaml).
    featureGates = [
      { name = "RayClusterStatusConditions", enabled = true },
      { name = "RayJobDeletionPolicy", enabled = true },
      { name = "RayServiceIncrementalUpgrade", enabled = true },
    ]
    nodeSelector = var.node_selector
    resources = {
      requests = { cpu = "100m", memory = "512Mi" }
      limits   = { cpu = "1", memory = "1Gi" }
    }
  })]
}
