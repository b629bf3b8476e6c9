// Traffic shaping in the delivery driver (issue 16): the decisions are the core's (MailQueue's Shaper,
// the Scheduler's gates, DeliveryCore's shaping calls); here they are carried out. New connections
// open on the lane the core names (egress source bound, the rule's limits and TLS); each tells the core
// whether it reached a host and every reply that was not positive; destinations that need their MX
// names for a rule's `mx` are looked up with the Router's resolver; changes of state are logged once
// each and kept in the spool (shaping.state) across restarts; SIGHUP hands over a new policy.
//
// The admin endpoint's calls (`tern queue destinations/suspend/resume`, per-rule metrics) are the
// first four methods below.

import Foundation
import Logging
import MailQueue
import SMTPProtocol
import UVRuntime

extension DeliveryManager {
    /// Per destination (or rule) × source: queued, connections, rate, state.
    public func shapingView() -> [ShapingLaneView] { core.shapingView(now: now) }

    /// The postmaster suspends a destination or a rule (every source) for `seconds`. The group it
    /// applied to comes back (a destination under a rule is suspended as that rule).
    @discardableResult
    public func suspend(_ target: String, for seconds: Double, reason: String) -> ShapingGroup {
        let t = now
        let group = core.suspend(target, until: t + seconds, reason: reason, now: t)
        logShapingEvents()
        pump()
        return group
    }

    /// The postmaster lifts every suspension, throttle and dead state of a destination or rule.
    @discardableResult
    public func resume(_ target: String) -> ShapingGroup {
        let group = core.resume(target, now: now)
        logShapingEvents()
        pump()
        return group
    }

    /// Per rule label × source (bounded label sets): sent, deferred, seconds suspended, connections.
    public func shapingMetrics() -> [ShapingMetricKey: ShapingCounters] { core.shapingMetrics(now: now) }

    // MARK: - SIGHUP

    /// SIGHUP: a new shaping policy ([[shaping]], [[backoff]], [egress]; its defaults and dead-destination
    /// values come from [delivery], kept until a restart). Lanes' state is kept for groups that still
    /// exist; queued jobs move to their new groups. Idle connections QUIT, busy ones after their job,
    /// so the next message goes out under the new limits, source and TLS.
    public func applyShaping(_ policy: ShapingPolicy) {
        config.shapingRules = policy.rules
        config.backoff = policy.backoff
        config.egress = EgressConfig(sources: policy.sources, pools: policy.pools, select: policy.select)
        guard policy != core.shaper.policy else { return }
        egressSources = Self.sourcesByName(policy.sources)
        core.updateShaping(policy)
        // Busy connections finish their job and QUIT: the next one opens under the new rule.
        routesGeneration += 1
        closeIdleConnections()
        pump()
    }

    static func sourcesByName(_ sources: [EgressSource]) -> [String: EgressSource] {
        Dictionary(sources.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    // MARK: - MX rollup

    /// Destinations whose group depends on their MX names: looked up (cached answers shared with
    /// routing), then their jobs join their group. A failed lookup classifies with no MX (no rule).
    func classifyDestinations() {
        for destination in core.destinationsToClassify() {
            router.mxHosts(domain: destination) { [weak self] hosts in
                guard let self, !self.stopped else { return }
                self.core.classified(destination, mxHosts: hosts, now: self.now)
                self.pump()
            }
        }
    }

    // MARK: - What connections tell the core

    /// A connection reached no host of its destination (refused, timed out, no or a failing greeting).
    /// The failure count is saved too (at most once a second): after a kill -9 the destination is
    /// not given its whole threshold of failed connections again.
    func connectionFailed(_ connection: OutboundConnection, reason: String) {
        core.connectionFailed(connection.lane.lane, reason: reason, now: now)
        shapingState.dirty = true
        saveShapingState()
    }

    /// A connection's session is ready: the destination answers (a dead one resumes, a failure count
    /// starts over and is saved so).
    func connectionSucceeded(_ connection: OutboundConnection) {
        if core.connectionSucceeded(connection.lane.lane, now: now) {
            shapingState.dirty = true
            saveShapingState()
        }
        if core.hasShapingEvents { pump() }
    }

    /// A reply that is not positive, for [[backoff]] rules.
    func replySeen(_ connection: OutboundConnection, _ reply: Reply) {
        let text = reply.lines.count == 1 ? reply.lines[0] : reply.lines.joined(separator: " ")
        core.replySeen(connection.lane.lane, code: reply.code, enhanced: reply.enhanced, text: text, now: now)
    }

    /// A suspension, throttle or postmaster's resume from another node of the cluster.
    func applySharedShaping(_ event: ShapingEvent, from node: String) {
        core.applySharedShaping(event, now: now)
        logShapingEvents(from: node)
        pump()
    }

    /// Where the rules' limits come from now (a cluster's Redis up or down).
    func setSharing(_ sharing: Shaper.Sharing) {
        core.setSharing(sharing)
        pump()
    }

    /// The cluster's renewal found this node above its share of a rule's connections while another
    /// node waits: `count` connections go (those already closing for it count), idle ones at once,
    /// busy ones after their current message. 0: any earlier ask not carried out yet is forgotten.
    func shed(_ lane: ShapingLane, count: Int) {
        let more = core.shed(lane, count: count)  // besides those already closing for it
        guard more > 0 else { return }
        let idle = idleConnections.take(lane: lane, max: more)
        core.closingIdle(lane, count: idle.count)
        for connection in idle { connection.finish() }
    }

    /// A lease or permit the cluster refused: asked again if the lane still wants it.
    func recheckShared(_ lane: ShapingLane) {
        core.recheckShared(lane)
        pump()
    }

    /// Leases or permits the cluster granted: the lanes waiting for them go on.
    func grantShared(_ want: Shaper.SharedWant, count: Int, until: Double) {
        core.grantShared(want, count: count, until: until)
        pump()
    }

    // MARK: - Events and the state file

    /// Shaping's changes of state, each logged once (reasons quote next hops' replies: the logger
    /// makes them one safe line), and the state saved.
    func logShapingEvents(from node: String? = nil) {
        let origin = node.map { " (from cluster node \($0))" } ?? ""
        for event in core.takeShapingEvents() {
            switch event {
            case .suspended, .throttled: log.warning("\(event.logText)\(origin)")
            case .resumed, .throttleEnded: log.info("\(event.logText)\(origin)")
            }
            // This node's decisions go to the others; theirs, applied here, do not go back.
            if node == nil { cluster?.shareShaping(event) }
        }
        shapingState.dirty = true
        saveShapingState()
    }

    /// Writes the state file on the thread pool, atomically, at most once a second, when it changed.
    func saveShapingState() {
        guard shapingState.dirty, !shapingState.writing, !stopped else { return }
        let t = now
        let wait = shapingState.lastWrite + ShapingStateFile.minimumInterval - t
        if wait > 0 {
            if shapingState.timer == nil { shapingState.timer = UVRuntime.Timer(loop: loop) }
            guard let timer = shapingState.timer, !timer.isActive else { return }
            timer.start(afterMilliseconds: UInt64(wait * 1000) + 1) { [weak self] in self?.saveShapingState() }
            return
        }
        shapingState.dirty = false
        shapingState.writing = true
        shapingState.lastWrite = t
        let snapshot = core.shapingSnapshot(now: t)
        let path = ShapingStateFile.path(spool: spool.path)
        let writer = shapingState.writer
        let generation = writer.nextGeneration()
        var failure: Error?
        loop.queueWork({
            do { try writer.write(snapshot, generation: generation, to: path) } catch { failure = error }
        }, done: { [weak self] in
            guard let self else { return }
            self.shapingState.writing = false
            if let failure { self.log.error("shaping state: cannot write \(path): \(failure)") }
            self.saveShapingState()  // changed meanwhile
        })
    }

    /// Shutdown: the latest state, written now (on the loop: a small file, once). A pool write still
    /// under way finishes first; one not begun yet finds this newer state written and drops its own.
    func saveShapingStateNow() {
        shapingState.timer?.close()
        shapingState.timer = nil
        guard shapingState.dirty || shapingState.writing else { return }
        shapingState.dirty = false
        let path = ShapingStateFile.path(spool: spool.path)
        let writer = shapingState.writer
        do {
            try writer.write(core.shapingSnapshot(now: now), generation: writer.nextGeneration(), to: path)
        } catch {
            log.error("shaping state: cannot write \(path): \(error)")
        }
    }

    /// Start-up: the state the last run saved. An unreadable file is reported and delivery starts clean.
    func restoreShaping(_ read: Result<ShapingSnapshot?, Error>, path: String) {
        switch read {
        case .success(nil):
            break
        case .success(let snapshot?):
            core.restoreShaping(snapshot, now: now)
            log.info("shaping state: restored \(snapshot.lanes.count) lane(s) and \(snapshot.groups.count) postmaster suspension(s) from \(path)")
            if core.hasShapingEvents { logShapingEvents() }
        case .failure(let error):
            log.warning("shaping state: cannot read \(path), starting without it: \(error)")
        }
    }
}

/// The shaping state's file in the spool: suspensions, throttles, dead destinations and rate times,
/// JSON (StateFile), written at most once a second.
struct ShapingStateFile {
    static let name = "shaping.state"
    static let minimumInterval = 1.0
    /// Changed since the last write.
    var dirty = false
    var writing = false
    var lastWrite = -Double.infinity
    /// Waits out the minimum interval between writes.
    var timer: UVRuntime.Timer?
    /// Orders the writes: the newest snapshot is the one that stays.
    let writer = StateFileWriter<ShapingSnapshot>()

    static func path(spool: String) -> String { "\(spool)/\(name)" }
}
