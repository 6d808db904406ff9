"""The product: the Session that every UI uses, and the user's local stores."""
