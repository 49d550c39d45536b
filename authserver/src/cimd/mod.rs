//! Clients that identify by a Client ID Metadata Document: fetched safely, checked, admitted by policy.
