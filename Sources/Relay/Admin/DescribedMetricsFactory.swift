// swift-metrics handles on a Prometheus registry, each family with its `# HELP` line.
//
// swift-prometheus's own PrometheusMetricsFactory registers every family with an empty help text,
// and the registry refuses (fatalError) a second registration of a family with another help text, so
// the help cannot be added beside it. This factory does what that one does (same registry calls,
// histogram buckets per name) through the registry's public calls that take a help text, found by
// family name in `help`. A family missing from the table comes out without HELP (the integration test
// test_build_info.py checks that none does).

import BuildInfo
import CoreMetrics
import Prometheus

struct DescribedMetricsFactory: CoreMetrics.MetricsFactory {
    let registry: PrometheusCollectorRegistry
    /// Family name → its one-line description.
    let help: [String: String]
    /// Buckets of a Recorder made with `aggregate: true`, by name (else `defaultBuckets`).
    var valueHistogramBuckets: [String: [Double]] = [:]
    var defaultBuckets: [Double] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]

    /// The whole name as `metricName` (the registry joins the parts with "_" and skips empty ones).
    private func describe(_ name: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "",
                             helpText: name == "tern_build_info" ? Self.buildInfoHelp : help[name] ?? "")
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CoreMetrics.CounterHandler {
        registry.makeCounter(descriptor: describe(label), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: describe(label), labels: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any CoreMetrics.RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: describe(label), labels: dimensions) }
        return registry.makeValueHistogram(descriptor: describe(label), labels: dimensions,
                                           buckets: valueHistogramBuckets[label] ?? defaultBuckets)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any CoreMetrics.MeterHandler {
        registry.makeGauge(descriptor: describe(label), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any CoreMetrics.TimerHandler {
        registry.makeDurationHistogram(descriptor: describe(label), labels: dimensions,
                                       buckets: [.milliseconds(5), .milliseconds(50), .milliseconds(500), .seconds(5)])
    }

    func destroyCounter(_ handler: any CoreMetrics.CounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    func destroyRecorder(_ handler: any CoreMetrics.RecorderHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
        if let histogram = handler as? ValueHistogram { registry.unregisterValueHistogram(histogram) }
    }

    func destroyMeter(_ handler: any CoreMetrics.MeterHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
    }

    func destroyTimer(_ handler: any CoreMetrics.TimerHandler) {
        if let histogram = handler as? DurationHistogram { registry.unregisterDurationHistogram(histogram) }
    }

    /// tern_build_info: always 1, the build in its labels (a Prometheus convention, as go_build_info),
    /// so a dashboard can show which version and commit each instance runs.
    static let buildInfoHelp = "Always 1; the labels name the version, git commit and Swift compiler of this tern binary."

    func recordBuildInfo() {
        Gauge(label: "tern_build_info",
              dimensions: [("version", BuildInfo.version), ("commit", BuildInfo.commit), ("swift", BuildInfo.swiftVersion)],
              factory: self).record(1)
    }
}
