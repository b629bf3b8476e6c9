import Testing
@testable import SMTPProtocol

/// Hand-made Received chains in the forms real MTAs write. The top field is the newest hop.
@Suite struct ReceivedTraceTests {
    // 2026-11-26 16:46:14 UTC
    static let t0 = 1_795_711_574
    static let later = t0 + 3600

    static func message(_ fields: [String], eol: String = "\r\n") -> [UInt8] {
        Array((fields.joined(separator: eol) + eol + "Subject: hi" + eol + eol + "Received: in the body" + eol).utf8)
    }

    /// A clean three-hop chain: a laptop hands mail to Exim (submission), Exim to Postfix (the MX),
    /// Postfix to Tern. Folded lines, comments, an IPv6 literal.
    static let clean = [
        "Received: from mx.example.org (mx.example.org [IPv6:2001:db8::25])\r\n\tby relay.test (Tern) with ESMTP id 0661312EF1B4A7\r\n\tfor <bob@relay.test>; Thu, 26 Nov 2026 16:46:20 +0000",
        "Received: from smtp.example.com (smtp.example.com [192.0.2.10])\r\n\tby mx.example.org (Postfix) with ESMTPS id 4F2A1C0D3\r\n\tfor <bob@relay.test>; Thu, 26 Nov 2026 17:46:16 +0100 (CET)",
        "Received: from [198.51.100.7] (helo=laptop.example.com)\r\n\tby smtp.example.com with esmtpsa (TLS1.3) tls TLS_AES_256_GCM_SHA384\r\n\t(Exim 4.96)\r\n\t(envelope-from <alice@example.com>)\r\n\tid 1kABCD-0001Ab-Cd\r\n\tfor bob@relay.test; Thu, 26 Nov 2026 16:46:14 +0000",
    ]

    @Test func cleanChain() {
        let trace = ReceivedTrace(message: Self.message(Self.clean), now: Self.later)
        #expect(trace.findings == [])
        #expect(trace.hops.count == 3)
        let exim = trace.hops[0]
        #expect(exim.from == "[198.51.100.7]")
        #expect(exim.fromIP == "198.51.100.7")
        #expect(exim.by == "smtp.example.com")
        #expect(exim.with == "esmtpsa tls TLS_AES_256_GCM_SHA384")
        #expect(exim.id == "1kABCD-0001Ab-Cd")
        #expect(exim.recipient == "bob@relay.test")
        #expect(exim.date == Self.t0)
        let postfix = trace.hops[1]
        #expect(postfix.fromIP == "192.0.2.10")
        #expect(postfix.byComments == ["Postfix"])
        #expect(postfix.date == Self.t0 + 2)  // 17:46:16 +0100
        #expect(trace.hops[2].fromIP == "2001:db8::25")
        #expect(trace.hops[2].id == "0661312EF1B4A7")
        #expect(trace.delay(ofHop: 0) == nil)
        #expect(trace.delay(ofHop: 1) == 2)
        #expect(trace.delay(ofHop: 2) == 4)
    }

    @Test func bareLineFeedsAndCaseAreRead() {
        let fields = Self.clean.map { $0.replacingOccurrences("\r\n", "\n").replacingOccurrences("Received:", "RECEIVED:") }
        let trace = ReceivedTrace(message: Self.message(fields, eol: "\n"), now: Self.later)
        #expect(trace.hops.count == 3)
        #expect(trace.findings == [])
    }

    @Test func onlyTheHeaderSectionCounts() {
        let trace = ReceivedTrace(message: Self.message([Self.clean[2]]), now: Self.later)
        #expect(trace.hops.count == 1)  // not the "Received:" line in the body
    }

    @Test func forgedHop() {
        // The spammer's own hop is genuine (mx.example.org received from 203.0.113.66), but below it
        // he wrote a line claiming the message came through a bank's server: the chain breaks there.
        let fields = [
            "Received: from bank.example (dsl-66.isp.example [203.0.113.66])\r\n\tby mx.example.org (Postfix) with ESMTP id 7AB; Thu, 26 Nov 2026 16:46:20 +0000",
            "Received: from workstation (internal [10.0.0.5])\r\n\tby mail.bank.example (Postfix) with ESMTP id 11A; Thu, 26 Nov 2026 16:46:10 +0000",
        ]
        // The top hop is also the first untrusted one, and its client said HELO bank.example from an
        // address whose reverse name is dsl-66.isp.example: that is flagged too.
        let trace = ReceivedTrace(message: Self.message(fields), now: Self.later)
        #expect(trace.findings.map(\.kind) == [.forgedHelo, .brokenChain])
        #expect(trace.findings.map(\.hop) == [2, 2])
        #expect(trace.findings[0].message.contains("dsl-66.isp.example [203.0.113.66]"))
        #expect(trace.findings[1].message.contains("mail.bank.example"))
        #expect(trace.boundary == 1)
        #expect(trace.isUnverified(0) && !trace.isUnverified(1))
    }

    // The classic forged chain: the receiving site's MTA (top) recorded that the client said HELO
    // galangal.org from an address that resolves to turmeric.com. The two hops below were written
    // by turmeric.com itself; each names the hop below it, so the chain alone looks whole.
    static let classic = [
        "Received: from galangal.org (turmeric.com [104.128.23.115]) by mail.bieberdorf.edu (8.8.8.5); Thu, 26 Nov 2026 16:46:20 +0000",
        "Received: from lemongrass.org by galangal.org (8.7.3); Thu, 26 Nov 2026 16:46:17 +0000",
        "Received: from graprao.com by lemongrass.org (8.6.4); Thu, 26 Nov 2026 16:46:14 +0000",
    ]

    @Test func classicForgedChain() {
        let trace = ReceivedTrace(message: Self.message(Self.classic), now: Self.later)
        #expect(trace.hops.count == 3)
        #expect(trace.findings.map(\.kind) == [.forgedHelo])
        #expect(trace.findings.first?.hop == 3)
        #expect(trace.findings.first?.message
            == "HELO galangal.org, but mail.bieberdorf.edu recorded the client as turmeric.com [104.128.23.115]: the message came from turmeric.com [104.128.23.115]")
        #expect(trace.boundary == 2)
        #expect(trace.sender == "turmeric.com [104.128.23.115]")
        #expect(trace.isUnverified(0) && trace.isUnverified(1) && !trace.isUnverified(2))
    }

    @Test func consistentClassicChainPassesButBelowIsUnverified() {
        var fields = Self.classic
        fields[0] = fields[0].replacingOccurrences("(turmeric.com", "(galangal.org")
        let trace = ReceivedTrace(message: Self.message(fields), now: Self.later)
        #expect(trace.findings == [])
        #expect(trace.boundary == 2)
        #expect(trace.sender == "galangal.org [104.128.23.115]")
        #expect(trace.isUnverified(1) && !trace.isUnverified(2))
    }

    @Test func trustedHostsMoveTheBoundaryDown() {
        // Trusting turmeric.com (by name or address, never by HELO) makes its hop a fact: the
        // boundary moves to the hop it wrote, whose client named itself only by HELO.
        for host in ["turmeric.com", "104.128.23.115", "TURMERIC.COM."] {
            let trace = ReceivedTrace(message: Self.message(Self.classic), now: Self.later, trusted: [host])
            #expect(trace.findings == [], "\(host)")
            #expect(trace.boundary == 1, "\(host)")
            #expect(trace.sender == "lemongrass.org", "\(host)")
        }
        // The HELO name the client chose earns it nothing.
        let trace = ReceivedTrace(message: Self.message(Self.classic), now: Self.later, trusted: ["galangal.org"])
        #expect(trace.boundary == 2)
        #expect(trace.findings.map(\.kind) == [.forgedHelo])
    }

    @Test(arguments: [
        // Exim: the reverse name first, the HELO in the comment (written only when they differ).
        ("Received: from turmeric.com ([104.128.23.115] helo=galangal.org) by mx.test with esmtp id 1; Thu, 26 Nov 2026 16:46:20 +0000", true),
        ("Received: from turmeric.com ([104.128.23.115]) by mx.test with esmtp id 1; Thu, 26 Nov 2026 16:46:20 +0000", false),
        ("Received: from [104.128.23.115] (helo=galangal.org) by mx.test with esmtp id 1; Thu, 26 Nov 2026 16:46:20 +0000", false),
        // qmail: reverse name "unknown", so the HELO cannot be checked.
        ("Received: from unknown (HELO galangal.org) (104.128.23.115) by mx.test with SMTP; Thu, 26 Nov 2026 16:46:20 +0000", false),
        ("Received: from turmeric.com (HELO galangal.org) (104.128.23.115) by mx.test with SMTP; Thu, 26 Nov 2026 16:46:20 +0000", true),
        // Postfix: no reverse name; a HELO literal must be the client's address.
        ("Received: from galangal.org (unknown [104.128.23.115]) by mx.test (Postfix) with ESMTP id 1; Thu, 26 Nov 2026 16:46:20 +0000", false),
        ("Received: from [104.128.23.115] (unknown [104.128.23.115]) by mx.test (Postfix) with ESMTP id 1; Thu, 26 Nov 2026 16:46:20 +0000", false),
        ("Received: from [192.0.2.1] (unknown [104.128.23.115]) by mx.test (Postfix) with ESMTP id 1; Thu, 26 Nov 2026 16:46:20 +0000", true),
        ("Received: from GALANGAL.org. (galangal.org [104.128.23.115])\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby mx.test (Tern) with ESMTPS id 1; Thu, 26 Nov 2026 16:46:20 +0000", false),
    ])
    func heloCheckedAgainstWhatTheMTARecorded(_ field: String, _ flagged: Bool) {
        let trace = ReceivedTrace(message: Self.message([field]), now: Self.later)
        #expect(trace.findings.map(\.kind) == (flagged ? [.forgedHelo] : []))
        #expect(trace.boundary == 0)
    }

    @Test func terminalSafeEscapesControlCharacters() {
        #expect(terminalSafe("a\u{1B}[31mb\u{7}c\u{9B}d\té") == "a\\u{1B}[31mb\\u{7}c\\u{9B}d\\u{9}é")
        #expect(terminalSafe("plain text, ünïcode") == "plain text, ünïcode")
        // Invisible formatting (issue 14): a bidi override turns "\u{202E}gpj.exe" into "exe.jpg" on screen.
        #expect(terminalSafe("\u{202E}gpj.exe \u{2067}x\u{2069} a\u{200B}b\u{200D}c \u{FEFF}d\u{2028}e\u{2029} f\u{AD}g \u{E0001}")
                == "\\u{202E}gpj.exe \\u{2067}x\\u{2069} a\\u{200B}b\\u{200D}c \\u{FEFF}d\\u{2028}e\\u{2029} f\\u{AD}g \\u{E0001}")
        #expect(terminalSafe("日本 e\u{301} 👍🏽 \u{A0}") == "日本 e\u{301} 👍🏽 \u{A0}")
        #expect(isInvisibleFormatting("\u{202A}") && isInvisibleFormatting("\u{2028}") && !isInvisibleFormatting("a")
                && !isInvisibleFormatting("\u{9B}") && !isInvisibleFormatting("\u{301}"))
    }

    /// `tern queue show --message` on a terminal: lines, tabs and CRLF stay; ESC, a lone CR, C1, bidi and
    /// zero-width characters and bytes that are not UTF-8 are escaped; other UTF-8 stays.
    @Test func terminalSafeMessageKeepsLinesAndEscapesTheRest() {
        let message = Array("Subject: x\u{1B}[2J\r\n\tfolded\r\n\r\nbody \u{202E}gpj.exe\u{200B} 日本\rover\n\u{9B}2J".utf8)
            + [0xFF, 0xC3, 0x28, 0xE2, 0x80] + Array("\r".utf8)
        #expect(terminalSafeMessage(message) == "Subject: x\\u{1B}[2J\r\n\tfolded\r\n\r\nbody \\u{202E}gpj.exe\\u{200B} 日本"
                + "\\u{D}over\n\\u{9B}2J\\xFF\\xC3(\\xE2\\x80\\u{D}")
        #expect(terminalSafeMessage([]) == "")
        let plain = "Received: from a.test\r\n\r\nHällo\r\n"
        #expect(terminalSafeMessage(Array(plain.utf8)) == plain)
    }

    @Test func matchingByAddressOrReverseName() {
        // The next hop names the previous one only by its address or its reverse DNS name: still a chain.
        let byAddress = [
            "Received: from unknown (HELO x) ([192.0.2.10]) by b.example with SMTP id 2; Thu, 26 Nov 2026 16:46:20 +0000",
            "Received: from c.example (c.example [192.0.2.9]) by [192.0.2.10] with SMTP id 1; Thu, 26 Nov 2026 16:46:19 +0000",
        ]
        #expect(ReceivedTrace(message: Self.message(byAddress), now: Self.later).findings == [])
        let byName = [
            "Received: from helo-says-this (a.example. [192.0.2.10]) by b.example with SMTP id 2; Thu, 26 Nov 2026 16:46:20 +0000",
            "Received: from c.example (c.example [192.0.2.9]) by A.Example with SMTP id 1; Thu, 26 Nov 2026 16:46:19 +0000",
        ]
        // The chain holds by the reverse name; but at the first untrusted hop (the top) the HELO
        // disagrees with that name, which a trusted MTA recorded: flagged since issue 13.
        #expect(ReceivedTrace(message: Self.message(byName), now: Self.later).findings.map(\.kind) == [.forgedHelo])
        // Trusting a.example makes its hop a fact: then the chain and its HELO pass.
        #expect(ReceivedTrace(message: Self.message(byName), now: Self.later, trusted: ["a.example"]).findings == [])
    }

    @Test func contentFilterOnLoopback() {
        // Postfix hands mail to amavis on localhost and takes it back: three fields, one machine.
        let fields = [
            "Received: from localhost (localhost [127.0.0.1]) by mx.example.org (Postfix) with ESMTP id 3C; Thu, 26 Nov 2026 16:46:16 +0000",
            "Received: from mx.example.org ([127.0.0.1]) by localhost (mx.example.org [127.0.0.1]) (amavisd-new, port 10024) with ESMTP id 2B; Thu, 26 Nov 2026 16:46:15 +0000",
            "Received: from c.example (c.example [192.0.2.9]) by mx.example.org (Postfix) with ESMTP id 1A; Thu, 26 Nov 2026 16:46:14 +0000",
        ]
        #expect(ReceivedTrace(message: Self.message(fields), now: Self.later).findings == [])
    }

    @Test func datesOutOfOrder() {
        let fields = [
            "Received: from b.example (b.example [192.0.2.2]) by c.example (Postfix) with ESMTP id 3; Thu, 26 Nov 2026 16:40:00 +0000",
            "Received: from a.example (a.example [192.0.2.1]) by b.example (Postfix) with ESMTP id 2; Thu, 26 Nov 2026 16:46:14 +0000",
        ]
        let trace = ReceivedTrace(message: Self.message(fields), now: Self.later)
        #expect(trace.findings.map(\.kind) == [.dateBackwards])
        #expect(trace.findings[0].hop == 2)
        #expect(trace.delay(ofHop: 1) == -374)
        // With enough allowance for clock skew it passes.
        #expect(ReceivedTrace(message: Self.message(fields), now: Self.later, allowedSkew: 400).findings == [])
    }

    @Test func dateInTheFuture() {
        let fields = ["Received: from a.example ([192.0.2.1]) by b.example with SMTP id 1; Fri, 27 Nov 2026 16:46:14 +0000"]
        let trace = ReceivedTrace(message: Self.message(fields), now: Self.t0)
        #expect(trace.findings.map(\.kind) == [.dateInFuture])
        #expect(trace.findings[0].message.contains("1d00h"))
    }

    @Test(arguments: [
        ("Received: this is not a trace field at all", TraceFinding.Kind.unparsable),
        ("Received: from a.example (unclosed comment by b.example; Thu, 26 Nov 2026 16:46:14 +0000", .unparsable),
        ("Received: from a.example by b.example with SMTP id 1", .unparsable),  // no date
        ("Received: from a.example by b.example with SMTP; 31 Feb 2026 10:00:00 +0000", .unparsable),
        ("Received: from a.example by b.example with SMTP; Mon, 26 Nov 2026 16:46:14 +0000", .unparsable),  // a Thursday
        ("Received: from a.example by b.example; Thu, 26 Nov 2026 16:46 +2500", .unparsable),
        ("Received: garbage from a.example by b.example; Thu, 26 Nov 2026 16:46:14 +0000", .unparsable),
        ("Received: from a.example with SMTP; Thu, 26 Nov 2026 16:46:14 +0000", .unparsable),  // no by
        // (HELO host.example: a HELO that disagreed with the reverse name would be flagged as well.)
        ("Received: from host.example (host.example [192.0.2.1] (may be forged)) by b.example (8.15.2/8.15.2) with ESMTP id x; Thu, 26 Nov 2026 16:46:14 +0000", .notedByMTA),
    ])
    func unparsable(_ field: String, _ kind: TraceFinding.Kind) {
        let trace = ReceivedTrace(message: Self.message([field]), now: Self.later)
        #expect(trace.hops.count == 1)
        #expect(trace.findings.map(\.kind) == [kind])
    }

    @Test func sendmailAndLocalSubmission() {
        // Sendmail's local submission (no from clause, a comment first), its own relay over
        // loopback, then Postfix's pickup form on the next machine and a Postfix relay hop.
        let fields = [
            "Received: from mx.example.org (mx.example.org [192.0.2.25]) by relay.test (Postfix) with ESMTP id 9F; Thu, 26 Nov 2026 16:46:18 +0000",
            "Received: from host.example (host.example [192.0.2.7])\r\n\tby mx.example.org (8.15.2/8.15.2) with ESMTP id 0AQGk2xx\r\n\tfor <bob@relay.test>; Thu, 26 Nov 2026 16:46:16 +0000",
            "Received: from host.example (localhost [127.0.0.1])\r\n\tby host.example (8.15.2/8.15.2) with ESMTP id 0AQGk1yy; Thu, 26 Nov 2026 16:46:15 +0000",
            "Received: (from alice@localhost)\r\n\tby host.example (8.15.2/8.15.2/Submit) id 0AQGk1xx; Thu, 26 Nov 2026 16:46:14 +0000",
        ]
        let trace = ReceivedTrace(message: Self.message(fields), now: Self.later)
        #expect(trace.findings == [])
        #expect(trace.hops[0].from == nil)
        #expect(trace.hops[0].by == "host.example")
        #expect(trace.hops[0].id == "0AQGk1xx")
        #expect(trace.hops[1].fromIP == "127.0.0.1")
        #expect(trace.hops[2].byComments == ["8.15.2/8.15.2"])
        #expect(trace.hops[2].recipient == "<bob@relay.test>")
        #expect(trace.hops[3].with == "ESMTP")
        #expect((1...3).map { trace.delay(ofHop: $0) } == [1, 1, 2])
    }

    @Test func gmailAndExchangeForms() {
        let fields = [
            "Received: by 2002:a05:6a10:c5d0:b0:4d1:9f35:13a2 with SMTP id z16csp123456pxb;\r\n        Thu, 26 Nov 2026 08:46:16 -0800 (PST)",
            "Received: from mail-sor-f41.google.com (mail-sor-f41.google.com. [209.85.220.41])\r\n        by mx.google.com with SMTPS id a1sor123.2026.11.26.08.46.15\r\n        for <bob@gmail.com>\r\n        (Google Transport Security);\r\n        Thu, 26 Nov 2026 08:46:15 -0800 (PST)",
            "Received: from BN8PR.namprd.prod.outlook.com (2603:10b6:408:ec::10) by mail-sor-f41.google.com\r\n (2603:10b6:a03:100::14) with Microsoft SMTP Server (version=TLS1_2,\r\n cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.5; Thu, 26 Nov 2026 16:46:14 +0000",
        ]
        let trace = ReceivedTrace(message: Self.message(fields), now: Self.later)
        #expect(trace.hops.count == 3)
        #expect(trace.hops[0].fromIP == "2603:10b6:408:ec::10")
        #expect(trace.hops[0].with == "Microsoft SMTP Server")
        #expect(trace.hops[1].fromIP == "209.85.220.41")
        #expect(trace.hops[1].recipient == "<bob@gmail.com>")
        #expect(trace.hops[1].date == Self.t0 + 1)
        #expect(trace.hops[2].from == nil)
        #expect(trace.hops[2].by == "2002:a05:6a10:c5d0:b0:4d1:9f35:13a2")
        // Gmail's internal hop has no from clause: it names no client, so it cannot break the chain.
        #expect(trace.findings == [])
    }

    @Test(arguments: [
        ("Thu, 26 Nov 2026 16:46:14 +0000", 1_795_711_574),
        ("26 Nov 2026 16:46:14 +0000", 1_795_711_574),
        ("Thu, 26 Nov 2026 08:46:14 -0800 (PST)", 1_795_711_574),
        ("Thu, 26 Nov 2026 08:46:14 PST", 1_795_711_574),
        ("26 Nov 26 16:46:14 GMT", 1_795_711_574),
        ("26 Nov 2026 16:46 UT", 1_795_711_560),
        ("Thu,26 Nov 2026 16:46:14 +0000", 1_795_711_574),
        ("Sat, 29 Feb 2020 00:00:00 +0000", 1_582_934_400),
        ("Thu, 1 Jan 1970 00:00:00 +0000", 0),
    ])
    func dates(_ text: String, _ expected: Int) throws {
        #expect(try parseRFC5322Date(text).get() == expected)
    }

    @Test(arguments: ["", "Thu, 26 Nov 2026", "Thu, 26 Foo 2026 16:46:14 +0000", "29 Feb 2026 00:00:00 +0000",
                      "26 Nov 2026 24:00:00 +0000", "26 Nov 2026 16:46:14", "26 Nov 2026 16:46:14 +0000 extra",
                      // Digits that are not ASCII (a remote sender writes these headers): refused, not a crash.
                      "26 Nov 2026 16:46:٠٠ +0000", "26 Nov 2026 16:46:½½ +0000", "26 Nov 2026 ١٦:46:00 +0000",
                      "٢٦ Nov 2026 16:46:00 +0000", "26 Nov ٢٠٢٦ 16:46:00 +0000", "26 Nov 2026 16:46:00 +٠١٠٠",
                      "+6 Nov 2026 16:46:00 +0000", "26 Nov 2026 16:+6:00 +0000"])
    func badDates(_ text: String) {
        #expect(throws: DateError.self) { try parseRFC5322Date(text).get() }
    }

    @Test func delays() {
        #expect(formatDelay(0) == "0s")
        #expect(formatDelay(75) == "1m15s")
        #expect(formatDelay(7260) == "2h01m")
        #expect(formatDelay(90000) == "1d01h")
        #expect(formatDelay(-5) == "-5s")
    }

    @Test func addresses() {
        #expect(isIPv6("::1"))
        #expect(isIPv6("2001:db8::1"))
        #expect(isIPv6("::ffff:192.0.2.1"))
        #expect(isIPv6("1:2:3:4:5:6:7:8"))
        #expect(!isIPv6("1:2:3"))
        #expect(!isIPv6("1::2::3"))
        #expect(!isIPv6("16:46:14"))
        #expect(!isIPv4("256.1.1.1"))
        #expect(!isIPv4("192.0.2.١"))
    }

    @Test func nonASCIIDigitsInAWholeChain() {
        // `tern trace` died on these (a force unwrap of Int("٠٠")); the date is now simply unreadable.
        for date in ["Thu, 26 Nov 2026 16:46:٠٠ +0000", "Thu, 26 Nov 2026 16:46:½½ +0000"] {
            let field = "Received: from a.example (a.example [192.0.2.1]) by b.example; \(date)"
            let trace = ReceivedTrace(message: Self.message([field]), now: Self.later)
            #expect(trace.hops.count == 1)
            #expect(trace.hops[0].date == nil)
        }
        #expect(addressIn("[192.0.2.1]:4321") == "192.0.2.1")
        #expect(addressIn("[IPv6:2001:db8::1]") == "2001:db8::1")
    }
}

private extension String {
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
