"""How writes to the API server are paced (shared by every component that writes a CR)."""
