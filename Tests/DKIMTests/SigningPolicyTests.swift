// SigningPolicyTests.swift: which domains sign a message, from the client, the authenticated user, the
// recipients' routes and the From: domain (DKIMSigningPolicy).

import DKIM
import Testing

@Suite struct SigningPolicyTests {
    let policy = DKIMSigningPolicy(
        keyDomains: ["example.com", "deep.news.example.com", "esp.example", "partner-sign.example"],
        users: ["newsletter": "esp.example"],
        routes: ["partner.example": "partner-sign.example", "*": "esp.example"],
        routeKeys: ["partner.example", "own.example"])

    @Test func onlyTrustedOrAuthenticatedClientsAreSigned() {
        #expect(DKIMSigningPolicy.signs(trustedClient: true, authenticatedUser: nil))
        #expect(DKIMSigningPolicy.signs(trustedClient: false, authenticatedUser: "alice"))
        #expect(!DKIMSigningPolicy.signs(trustedClient: false, authenticatedUser: nil))
    }

    @Test func theFromDomainOrItsClosestParentWithKeys() {
        #expect(policy.keyDomain(forAuthorDomain: "example.com") == "example.com")
        #expect(policy.keyDomain(forAuthorDomain: "news.example.com") == "example.com")
        #expect(policy.keyDomain(forAuthorDomain: "a.deep.news.example.com") == "deep.news.example.com")
        #expect(policy.keyDomain(forAuthorDomain: "notexample.com") == nil)
        #expect(policy.keyDomain(forAuthorDomain: "com") == nil)
        #expect(policy.keyDomain(forAuthorDomain: "") == nil)
    }

    @Test func aUserWithAFixedDomainIgnoresFromAndRoutes() {
        let choice = policy.choice(authenticatedUser: "newsletter", recipientDomains: ["partner.example", "own.example"])
        #expect(choice == DKIMSigningChoice(fixed: ["esp.example"], byAuthor: false))
        #expect(policy.domains(choice, authorDomain: "example.com") == ["esp.example"])
    }

    @Test func routesFixTheDomainOfTheirRecipients() {
        // partner.example has its own fixed domain; own.example is routed on its own, without one (not
        // "*"'s); any other domain takes "*"'s.
        #expect(policy.choice(authenticatedUser: "alice", recipientDomains: ["partner.example"])
                == DKIMSigningChoice(fixed: ["partner-sign.example"], byAuthor: false))
        #expect(policy.choice(authenticatedUser: nil, recipientDomains: ["own.example"]) == .byAuthor)
        #expect(policy.choice(authenticatedUser: nil, recipientDomains: ["gmail.com", "yahoo.com"])
                == DKIMSigningChoice(fixed: ["esp.example"], byAuthor: false))
        let mixed = policy.choice(authenticatedUser: nil,
                                  recipientDomains: ["own.example", "partner.example", "gmail.com", "partner.example"])
        #expect(mixed == DKIMSigningChoice(fixed: ["partner-sign.example", "esp.example"], byAuthor: true))
        // The From: domain's signature first, each domain once.
        #expect(policy.domains(mixed, authorDomain: "news.example.com") == ["example.com", "partner-sign.example", "esp.example"])
        #expect(policy.domains(mixed, authorDomain: "esp.example") == ["esp.example", "partner-sign.example"])
        #expect(policy.domains(mixed, authorDomain: nil) == ["partner-sign.example", "esp.example"])
    }

    @Test func withoutRoutesOrUsersTheFromDomainDecides() {
        let plain = DKIMSigningPolicy(keyDomains: ["example.com"])
        #expect(plain.choice(authenticatedUser: "alice", recipientDomains: ["gmail.com"]) == .byAuthor)
        #expect(plain.domains(.byAuthor, authorDomain: "mail.example.com") == ["example.com"])
        #expect(plain.domains(.byAuthor, authorDomain: "example.org").isEmpty)
        // Not asked about recipients at all: the caller may pass none.
        #expect(plain.choice(authenticatedUser: nil, recipientDomains: []) == .byAuthor)
    }
}
